"""Ctrl-C always ends an ``fml`` command with one line and exit code 130, even when library code swallows the
``KeyboardInterrupt`` or hangs while unwinding (``pipelines/interrupts.py``)."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: a block that swallows every KeyboardInterrupt: without the watchdog it never ends (two nested handlers, so
#: an interrupt landing in the inner ``except`` clause is swallowed too)
SWALLOWING = """
import sys, time
from pipelines.interrupts import exit_on_interrupt

def spin():
    while True:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            pass

with exit_on_interrupt("fml run: interrupted", grace_s={grace}) as reported:
    ready = False
    while True:
        try:
            if not ready:  # inside the handler: a signal sent as soon as the test reads this is swallowed too
                ready = print("ready", flush=True) or True
            spin()
        except KeyboardInterrupt:
            pass
"""


def _start(grace: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SWALLOWING.format(grace=grace))], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_swallowed_ctrl_c_still_exits_130_with_one_line_after_the_grace_period() -> None:
    proc = _start(grace=1.0)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["fml run: interrupted"]
    assert time.monotonic() - start >= 0.9


def test_a_second_ctrl_c_exits_at_once() -> None:
    proc = _start(grace=600.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines() == ["fml run: interrupted"]


def test_the_handler_is_restored_and_a_reported_interrupt_prints_nothing_more() -> None:
    from pipelines.interrupts import exit_on_interrupt

    before = signal.getsignal(signal.SIGINT)
    with exit_on_interrupt("x") as reported:
        assert signal.getsignal(signal.SIGINT) is not before
        reported.set()
    assert signal.getsignal(signal.SIGINT) is before
