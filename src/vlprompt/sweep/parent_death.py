"""Workers die with their sweep: a local worker asks the kernel for a signal when its parent dies.

Kept free of heavy imports, so that a worker arms it before spending seconds importing torch.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_ENV = "VLPROMPT_SWEEP_PARENT"  # the sweep's pid, set in each worker's environment
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when its parent (pid ``parent``) dies (Linux prctl PR_SET_PDEATHSIG); exit at once
    when the parent is already gone."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)
