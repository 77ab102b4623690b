"""The `fml federate` wrapper around Flower's processes: loopback by default, absolute certificate paths,
a warning for --insecure, and no orphaned Flower processes after SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from argparse import Namespace

import pytest

from pipelines.federate import _tls_args, insecure_warning
from pipelines.federate_local import free_port, wait_port
from tests.conftest import REPO_ROOT


def test_relative_certificate_folders_become_absolute_paths(tmp_path, monkeypatch):
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("ca.crt", "server.pem", "server.key"):
        (certs / name).write_text("x")
    monkeypatch.chdir(tmp_path)
    server = _tls_args(Namespace(insecure=False, certificates="certs/"), server=True)
    assert server[1] == str(certs / "ca.crt") and all(os.path.isabs(a) for a in server[1::2])
    assert _tls_args(Namespace(insecure=False, certificates="certs"), server=False) == \
        ["--root-certificates", str(certs / "ca.crt")]
    (certs / "server.key").unlink()
    with pytest.raises(FileNotFoundError, match="missing .*server.key"):
        _tls_args(Namespace(insecure=False, certificates="certs"), server=True)


def test_insecure_warning_names_the_exposure():
    assert "processes on this machine" in insecure_warning("SuperLink", "127.0.0.1:9092")
    assert "anyone who can reach" in insecure_warning("SuperLink", "0.0.0.0:9092")


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_to_the_wrapper_stops_the_superlink_it_started(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "FML_HOME": str(tmp_path)}
    wrapper = subprocess.Popen([sys.executable, "-m", "pipelines.federate", "superlink", "--insecure",
                                "--port", str(port)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, timeout=120, proc=wrapper)
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(timeout=30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 20
        while _listening(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _listening(port), "the SuperLink outlived its wrapper"
        assert "WARNING: --insecure" in wrapper.stderr.read()
        left = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True).stdout.split()
        assert not left, f"orphaned Flower processes: {left}"
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
