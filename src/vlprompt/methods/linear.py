"""Linear probe: one Linear head on frozen image features, the baseline every prompt method must beat."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.config_utils import ValidatedConfig
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import PromptMethod, register_method


@dataclass
class LinearConfig(ValidatedConfig):
    """Linear probe options."""

    normalize: bool = field(
        default=False,
        metadata={"help": (
            "L2-normalise features before the head (useful for CLIP features; off as in VPT's table)"
        )},
    )


@register_method("linear")
class LinearProbe(PromptMethod):
    """Head-only training; the image tower is frozen, so the trainer may cache its features once."""

    config_class = LinearConfig
    uses_image_features = True
    # A head on cached features converges in few epochs with Adam; SGD at the library default is far slower.
    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4}

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: LinearConfig) -> None:
        super().__init__(backbone, labels, config)
        self.head = nn.Linear(backbone.visual.feature_dim, labels.num_classes)

    def _features(self, batch: dict) -> torch.Tensor:
        features = batch.get("features")
        if features is None:
            with torch.no_grad():
                features = self.image_features(batch["image"])
        features = features.to(self.head.weight.dtype)
        if self.config.normalize:
            features = nn.functional.normalize(features, dim=-1)
        return features

    def forward(self, batch: dict) -> dict:
        logits = self.head(self._features(batch))
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}
