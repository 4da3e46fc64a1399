"""The classification head of the VPT paper's protocols (KMnP/vpt ``src/models/mlp.py``, ``vit_models.setup_head``).

``MODEL.MLP_NUM`` = k hidden layers of the feature width, each Linear -> ReLU -> BatchNorm1d -> Dropout(0.1), then a
last Linear to the classes. Every Linear is kaiming-normal (fan_out, a = 0) initialised; the last one's bias starts at
-log((1 - 0.01) / 0.01), the "prior probability 0.01" bias the official head always uses (``special_bias=True``);
hidden biases keep PyTorch's default init. k = 0 is a single Linear: the head of every VPT Table 1 row except Mlp-k.

One difference, said loudly: the official train loader drops the last incomplete batch, so BatchNorm never sees a
batch of one; the library's trainer keeps it, and a training batch of one is normalised with the running statistics
(as in eval) instead of failing.

BatchNorm's running statistics are part of what a head learns, and a prompt checkpoint stores trained parameters:
``TrackedBatchNorm1d`` holds them as frozen (requires_grad=False) parameters, updated in place exactly as buffers
are, so that ``frozen_statistics`` can add them to a method's ``trainable_state_dict`` and every loader finds them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

PRIOR_PROBABILITY = 0.01


class TrackedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose running statistics are frozen parameters (saved with the head), and which normalises a
    training batch of one with them instead of failing."""

    def __init__(self, num_features: int, **options) -> None:
        super().__init__(num_features, **options)
        statistics_as_parameters(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False,
                                            0.0, self.eps)
        return super().forward(x)


def mae_probe_head(feature_dim: int, num_classes: int) -> nn.Sequential:
    """MAE's linear-probe head as AdaptFormer's ``main_image.py`` builds it: BatchNorm1d(affine=False, eps=1e-6), then
    a Linear with truncated-normal (std 0.01) weights and zero bias."""
    linear = nn.Linear(feature_dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(TrackedBatchNorm1d(feature_dim, affine=False, eps=1e-6), linear)


def statistics_as_parameters(module: nn.Module) -> None:
    """Turn every buffer of ``module`` (BatchNorm running statistics) into a frozen parameter, updated in place as
    before, so that it is saved and loaded with the trained tensors (a fully trained side network's BatchNorms)."""
    for sub in module.modules():
        for name in [n for n, b in sub._buffers.items() if b is not None and n not in sub._non_persistent_buffers_set]:
            setattr(sub, name, nn.Parameter(sub._buffers.pop(name), requires_grad=False))


def frozen_statistics(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The frozen parameters of a trained module (its running statistics), named as in the method's state."""
    return {f"{prefix}.{name}": p.detach().clone() for name, p in module.named_parameters() if not p.requires_grad}


class VPTHead(nn.Module):
    """``projection``: mlp_num [Linear(d, d), ReLU, BatchNorm1d(d), Dropout] blocks; ``last_layer``: Linear(d, C).

    The attribute names are the official ones, so its weights map one to one."""

    def __init__(self, feature_dim: int, num_classes: int, mlp_num: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(mlp_num):
            linear = nn.Linear(feature_dim, feature_dim)
            nn.init.kaiming_normal_(linear.weight, a=0, mode="fan_out")
            layers += [linear, nn.ReLU(), TrackedBatchNorm1d(feature_dim)]
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.projection = nn.Sequential(*layers)
        self.last_layer = nn.Linear(feature_dim, num_classes)
        nn.init.kaiming_normal_(self.last_layer.weight, a=0, mode="fan_out")
        nn.init.constant_(self.last_layer.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.projection(features))
