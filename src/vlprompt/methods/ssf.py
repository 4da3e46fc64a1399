"""SSF (Lian et al., NeurIPS 2022): a learned per-channel scale and shift after every operation of a frozen ViT.

Official definition (dongzelian/SSF ``models/vision_transformer.py``): ``y * scale + shift`` after the patch
projection, norm1, qkv, the attention projection, norm2, fc1, fc2 and the final norm, scale ~ N(1, 0.02),
shift ~ N(0, 0.02) (prompts/adapters.py ``attach_ssf``); the head is timm's Linear. Every scale-shift follows a linear
operation, so ``merged_tower`` folds them into the weights before them (W' = diag(s) W, b' = s b + t): the library's
own architecture, no extra cost at inference. The official VTAB recipe is the ``ssf-vtab`` preset.
"""
from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from vlprompt.methods.base import register_method
from vlprompt.methods.peft import HeadOnlyConfig, TowerTuningMethod
from vlprompt.prompts.adapters import attach_ssf, merge_ssf


@register_method("ssf")
class SSFTuning(TowerTuningMethod):
    """Only the scales, shifts and the head train."""

    config_class = HeadOnlyConfig
    head_kind = "timm"
    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 5e-3, "weight_decay": 5e-5}

    def attach(self, tower: nn.Module) -> list[nn.Module]:
        attach_ssf(tower)
        return []

    def merged_tower(self) -> nn.Module:
        """A frozen copy of the image tower with every scale-shift folded into the weights before it."""
        return merge_ssf(self.visual)
