"""One seed for everything: Python, NumPy and torch generators; and the switch to deterministic kernels."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator a run draws from: Python, NumPy, torch's CPU one and each CUDA device's one."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": cuda}


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()``; CUDA states are restored when this process sees the same number of GPUs
    (a state saved on another machine layout cannot be mapped device by device, so it is left as seeded)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda", [])
    if not cuda:
        return
    if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    else:
        log.warning("The saved state holds %d CUDA generators but this process sees %d GPUs; CUDA random draws "
                    "(dropout on the GPU) will not replay the interrupted run exactly.", len(cuda),
                    torch.cuda.device_count() if torch.cuda.is_available() else 0)


def derived_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (e.g. run seed and epoch), independent of PYTHONHASHSEED."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & ((1 << 63) - 1)
    return value


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (TrainConfig.deterministic); False leaves torch's settings as the caller made them.

    Seeds fix what is drawn; they do not fix how a GPU adds numbers up. cuBLAS splits reductions by a workspace
    size (CUBLAS_WORKSPACE_CONFIG=:4096:8 makes it fixed), cuDNN autotunes its algorithm per run (benchmark)
    and some backward kernels add with atomics (use_deterministic_algorithms makes torch pick a deterministic
    one or raise). cuBLAS reads the variable when it creates its handle, so it is set before the first CUDA
    matrix product; a process that already made one is warned that the setting may come too late."""
    if not enabled:
        return
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            log.warning("train.deterministic: CUDA was initialised before CUBLAS_WORKSPACE_CONFIG could be set; "
                        "set CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment for bit-identical GPU runs.")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
