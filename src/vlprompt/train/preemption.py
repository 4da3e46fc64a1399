"""SIGTERM as a request to stop at the next step boundary with the resume state saved.

SLURM (before a time limit or on preemption) and Kubernetes (on eviction) send SIGTERM and kill the process a
grace period later. Python's default for SIGTERM is to die at once, losing every step since the last saved
state. While a fit runs, the handler below only records the request; the loop saves the resume state at the
next optimizer step boundary and raises ``Preempted``, whose message tells the user that rerunning the same
command resumes. The previous handler is restored when the fit ends.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from vlprompt.core.errors import Preempted


class StopRequest:
    """Whether SIGTERM arrived during the fit (set by the signal handler, read by the loop)."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum, frame) -> None:
        self.requested = True


@contextmanager
def stop_on_sigterm() -> Iterator[StopRequest]:
    """Catch SIGTERM for the duration of the block. Signal handlers can only be set from the main thread; a
    fit running in another thread keeps the process's own handling (and a request that never comes)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGTERM, request._handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)


def preempted_error(out_dir, step: int, saved: bool) -> Preempted:
    where = f"'{out_dir}'" if out_dir is not None else "(no run folder: nothing could be saved)"
    if saved:
        return Preempted(
            f"Stopped on SIGTERM after step {step}; the resume state in {where} holds that step. Rerun the same "
            "command (same config, same --out) to resume exactly where it stopped."
        )
    return Preempted(f"Stopped on SIGTERM after step {step} {where}; rerunning starts afresh.")
