"""The optimizer a TrainConfig names and its learning-rate schedule (linear warmup, then cosine or constant)."""
from __future__ import annotations

import math

import torch

from vlprompt.train.config import TrainConfig


def build_optimizer(config: TrainConfig, params: list, world_size: int,
                    lr_scales: list[float] | None = None) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW at the config's lr scaled for ``world_size`` processes.

    ``lr_scales`` (one per tensor, the method's ``lr_scales()``) puts tensors into one param group per multiplier,
    each group carrying its ``lr_scale``; the Trainer sets every group's lr to the scheduled lr times it."""
    lr = config.effective_lr(world_size)
    scales = lr_scales if lr_scales is not None else [1.0] * len(params)
    if len(scales) != len(params):
        raise ValueError(f"lr_scales has {len(scales)} entries for {len(params)} trainable tensors")
    groups = [{"params": [p for p, s in zip(params, scales) if s == scale], "lr_scale": scale, "lr": lr * scale}
              for scale in sorted(set(scales))]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, eps=config.adam_eps, weight_decay=config.weight_decay)


def lr_at(config: TrainConfig, step: int, base_lr: float, total: int, warmup: int) -> float:
    """Warm-up (linear from warmup_start_factor*lr, or constant warmup_lr), then cosine (or constant).

    With lr_update="epoch" the step is taken at its epoch's start, so the lr holds for the whole epoch.
    """
    if config.lr_update == "epoch" and config.epochs > 0:
        per_epoch = max(total // config.epochs, 1)
        step = step // per_epoch * per_epoch
    if step < warmup:
        if config.warmup_type == "constant":
            return config.warmup_lr
        start = config.warmup_start_factor
        return base_lr * (start + (1 - start) * step / max(warmup, 1))
    if config.scheduler == "constant":
        return base_lr
    span = total if config.cosine_span == "all_epochs" else total - warmup
    progress = (step - warmup) / max(span, 1)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(progress, 1.0)))
