"""The lr schedules the official recipes use: Dassl's constant warm-up + per-epoch cosine (CoOp family) and VPT's
per-epoch linear warm-up + cosine, cross-checked against torch's own schedulers stepped once per epoch."""
from __future__ import annotations

import math

import pytest
import torch

from vlprompt.backbones.tiny import tiny_timm_vit
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import LabelSpace
from vlprompt.methods import create_method
from vlprompt.train import TrainConfig, Trainer
from vlprompt.train.schedule import lr_at

STEPS_PER_EPOCH = 3


def _trainer(**train) -> Trainer:
    method = create_method("linear", tiny_timm_vit(seed=0), LabelSpace(["a", "b"]))
    return Trainer(method, TrainConfig(**train))


def _per_step(trainer: Trainer, base: float) -> list[float]:
    epochs = trainer.config.epochs
    total = STEPS_PER_EPOCH * epochs
    warmup = round(trainer.config.warmup_epochs * STEPS_PER_EPOCH)
    return [lr_at(trainer.config, step, base, total, warmup) for step in range(total)]


def test_dassl_constant_warmup_then_cosine_over_max_epoch_per_epoch():
    # CoOp configs/trainers/CoOp/vit_b16.yaml: WARMUP_EPOCH 1, WARMUP_TYPE constant, WARMUP_CONS_LR 1e-5, cosine.
    epochs, base = 6, 0.002
    trainer = _trainer(epochs=epochs, lr=base, warmup_epochs=1, warmup_type="constant", warmup_lr=1e-5,
                       lr_update="epoch", cosine_span="all_epochs")
    got = _per_step(trainer, base)
    # Dassl: ConstantWarmupScheduler over CosineAnnealingLR(T_max=MAX_EPOCH), stepped at every epoch's end.
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(epochs))
    expected_epochs = [1e-5, base]
    for _ in range(epochs - 2):
        optimizer.step()
        cosine.step()
        expected_epochs.append(cosine.get_last_lr()[0])
    expected = [lr for lr in expected_epochs for _ in range(STEPS_PER_EPOCH)]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert got[-1] > 0  # the last epoch never reaches 0 in Dassl's schedule


def test_vpt_linear_warmup_from_zero_then_cosine_after_warmup_per_epoch():
    # VPT configs/base-prompt.yaml: WARMUP_EPOCH 10 of TOTAL_EPOCH 100; src/solver/lr_scheduler.py, stepped per epoch.
    epochs, warmup, base = 6, 2, 0.5
    trainer = _trainer(epochs=epochs, lr=base, warmup_epochs=warmup, warmup_start_factor=0.0, lr_update="epoch")
    got = _per_step(trainer, base)
    per_epoch = [base * e / warmup for e in range(warmup)] + [
        base * 0.5 * (1 + math.cos(math.pi * (e - warmup) / (epochs - warmup))) for e in range(warmup, epochs)
    ]
    assert got == pytest.approx([lr for lr in per_epoch for _ in range(STEPS_PER_EPOCH)], rel=1e-12)


def test_default_schedule_is_unchanged_per_step():
    trainer = _trainer(epochs=2, lr=1.0, warmup_epochs=1)
    got = _per_step(trainer, 1.0)
    assert got[:3] == pytest.approx([0.01, 0.01 + 0.99 / 3, 0.01 + 0.99 * 2 / 3])
    assert got[3:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(3)])


def test_bad_schedule_knobs_are_refused_by_name():
    with pytest.raises(ConfigError, match="warmup_type"):
        TrainConfig(warmup_type="cosine")
    with pytest.raises(ConfigError, match="lr_update"):
        TrainConfig(lr_update="batch")
