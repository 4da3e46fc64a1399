"""The resume state: what a killed run needs to replay exactly the same remaining steps, and the checks that
keep a poisoned (non-finite) or foreign (other config) state from being resumed."""
from __future__ import annotations

from typing import Any

import torch

from vlprompt.artifacts.run_dir import mismatch_error
from vlprompt.core.errors import VlpromptError
from vlprompt.core.seeding import rng_state, set_rng_state


def diverged_error(trainer, what: str) -> VlpromptError:
    """The error for a loss or parameter that became non-finite, saying what to change and how to rerun."""
    fp32 = "" if trainer.config.precision == "fp32" else f"use train.precision=fp32 (now {trainer.config.precision}), "
    return VlpromptError(
        f"{what} at step {trainer.step} (epoch {trainer.epoch + 1}) of method '{trainer.method.method_name}'. "
        f"Lower the learning rate (now train.lr={trainer.config.lr}), {fp32}or set "
        "train.max_grad_norm. Nothing non-finite was saved: the run folder keeps its last finite resume state. A "
        "changed lr is a new config, so rerun it with --restart (same --out) or into a new --out."
    )


def check_finite(trainer, what: str) -> None:
    """Raise ``diverged_error`` if any trained floating-point parameter is NaN or infinite."""
    for name, tensor in trainer.method.trainable_state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise diverged_error(trainer, f"Parameter '{name}' of {what} became non-finite")


def resume_state(trainer, optimizer, epoch: int, micro: int, best) -> dict:
    """The state at the start of micro-batch ``micro`` of ``epoch``: parameters, optimizer, RNGs, history."""
    return {
        "trainable": trainer.method.trainable_state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "micro": micro,
        "step": trainer.step,
        "rng": rng_state(),
        "history": trainer.history,
        "best": best,
        "config": trainer.config.__dict__,
        "fingerprint": trainer.fingerprint,
    }


def restore(trainer, state: dict, optimizer) -> tuple[int, int, Any]:
    """Load ``state`` into the trainer, its method and ``optimizer``; returns (epoch, micro, best)."""
    stored = state.get("fingerprint")
    if stored is None:  # a state written before fingerprints: the seed is all it can be checked by
        stored = {**(trainer.fingerprint or {}), "train.seed": state.get("config", {}).get("seed")}
    if trainer.fingerprint is not None and stored != trainer.fingerprint:
        raise mismatch_error(trainer.out_dir, stored, trainer.fingerprint, finished=False, what=" (its resume state)")
    if any(t.is_floating_point() and not torch.isfinite(t).all() for t in state["trainable"].values()):
        raise VlpromptError(
            f"The resume state '{trainer.run_dir.resume}' holds non-finite parameters (written by an older "
            "version after the loss diverged). Rerun with --restart to start afresh."
        )
    named = trainer.method.trained_tensors()
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            named[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    trainer.step = state["step"]
    trainer.history = list(state["history"])
    return state["epoch"], state["micro"], state["best"]
