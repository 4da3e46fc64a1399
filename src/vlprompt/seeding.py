"""One seed for everything: Python, NumPy and torch generators."""
from __future__ import annotations

import logging
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
