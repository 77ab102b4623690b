"""Ctrl-C that always ends an ``fml`` command: one line on stderr and exit code 130.

The first SIGINT raises ``KeyboardInterrupt`` as usual, so the command unwinds (the MLflow run is marked,
checkpoints stay for ``--resume``). Unwinding runs library code that may swallow the exception or wait on a
lock the interrupted code held; a watchdog started by the signal itself therefore ends the process after
``grace_s`` seconds, and a second Ctrl-C ends it at once. Lightning ignores SIGINT while it shuts down
(``core.learner._fit`` restores this handler after it); the watchdog runs regardless.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

GRACE_S = 30.0


@contextmanager
def exit_on_interrupt(message: str, grace_s: float = GRACE_S) -> Iterator[threading.Event]:
    """Within the block, SIGINT raises ``KeyboardInterrupt`` and arms a ``grace_s`` watchdog that prints
    ``message`` (unless the block reported it: set the yielded event) and exits 130, also when the hang comes
    after the block (interpreter shutdown). Main thread only;
    elsewhere the block runs unchanged. The previous handler is restored after the block."""
    reported = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield reported
        return
    fired: list[threading.Timer] = []

    def exit_now() -> None:
        if not reported.is_set():
            print(message, file=sys.stderr, flush=True)
        os._exit(130)

    def on_sigint(_signum: int, _frame: object) -> None:
        if fired:  # a second Ctrl-C: no more waiting
            exit_now()
        timer = threading.Timer(grace_s, exit_now)
        timer.daemon = True
        timer.start()
        fired.append(timer)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield reported
    finally:  # an armed watchdog stays armed: it also covers a shutdown that hangs after the block
        signal.signal(signal.SIGINT, previous)
