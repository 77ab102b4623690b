"""Seconds per request to the team tracking server (``mlflow/serve.sh``, MLflow's basic-auth app), with the
credential cache (``MLFLOW_AUTH_CACHE_TTL``, default 60 s) against without it (TTL 0: the scrypt password hash
is checked on every request), and against the same server without authentication as the floor.

Each server starts on a free loopback port with its own folder; the client makes ``--warmup`` requests, then
times ``--requests`` of each kind: ``search_experiments`` (a read) and ``log_metric`` (a write, what a run
sends most). Ratios are against the cached server measured in the same run.

    PYTHONPATH=. python benchmarks/tracking_server_auth.py [--requests 30]

Last line: one JSON object.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tyro

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "bench-Admin-Pw-5520"  # a throwaway server's admin


@dataclass
class Config:
    """Requests to the team tracking server with and without the credential cache."""

    requests: int = 30
    """Timed requests of each kind per server."""
    warmup: int = 3
    """Untimed requests first (connection, first hash check)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: Path, cache_ttl: Optional[int]) -> tuple[subprocess.Popen, str]:
    """serve.sh with ``MLFLOW_AUTH_CACHE_TTL=cache_ttl``, or plain ``mlflow server`` when None (no auth)."""
    port = free_port()
    env = {**os.environ, "FML_HOME": str(folder), "MLFLOW_ADMIN_PASSWORD": PASSWORD,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if cache_ttl is None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    else:
        env["MLFLOW_AUTH_CACHE_TTL"] = str(cache_ttl)
        cmd = ["bash", str(REPO / "mlflow" / "serve.sh"), str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the tracking server exited during start-up ({' '.join(cmd)})")
            time.sleep(0.5)
    raise RuntimeError("the tracking server did not start in 120 s")


def time_requests(uri: str, cfg: Config) -> dict[str, float]:
    """Median seconds per request of each kind."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment(f"bench-{time.time_ns()}"))
    kinds = {"search_experiments": lambda i: client.search_experiments(),
             "log_metric": lambda i: client.log_metric(run.info.run_id, "m", float(i), step=i)}
    out = {}
    for name, request in kinds.items():
        for i in range(cfg.warmup):
            request(i)
        seconds = []
        for i in range(cfg.requests):
            start_s = time.perf_counter()
            request(i)
            seconds.append(time.perf_counter() - start_s)
        out[name] = statistics.median(seconds)
    return out


def main(cfg: Config) -> dict:
    sys.path.insert(0, str(REPO))
    from benchmarks.provenance import machine

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", PASSWORD
    servers = {"auth_cached": 60, "auth_uncached": 0, "no_auth": None}
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ttl in servers.items():
            proc, uri = start(Path(tmp) / name, ttl)
            try:
                seconds[name] = time_requests(uri, cfg)
            finally:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
            print(f"{name}: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in seconds[name].items()))
    ratios = {name: {k: round(v / seconds["auth_cached"][k], 2) for k, v in by_kind.items()}
              for name, by_kind in seconds.items()}
    print("per-request time relative to the cached server: " + "; ".join(
        f"{name} " + ", ".join(f"{k} x{r}" for k, r in by_kind.items()) for name, by_kind in ratios.items()))
    return {"benchmark": "tracking_server_auth", "requests": cfg.requests,
            "seconds_per_request": {n: {k: round(v, 4) for k, v in d.items()} for n, d in seconds.items()},
            "ratio_to_auth_cached": ratios, "machine": machine()}


if __name__ == "__main__":
    print(json.dumps(main(tyro.cli(Config))))
