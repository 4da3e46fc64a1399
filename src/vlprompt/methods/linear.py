"""Linear probe: one Linear head on frozen image features, the baseline every prompt method must beat."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import ValidatedConfig
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import PromptMethod, register_method
from vlprompt.methods.heads import HEAD_OPTION_HELP, dense_forward, task_head
from vlprompt.prompts.visual import prompted_block_outputs


@dataclass
class LinearConfig(ValidatedConfig):
    """Linear probe options."""

    normalize: bool = field(
        default=False,
        metadata={"help": (
            "L2-normalise features before the head (useful for CLIP features; off as in VPT's table)"
        )},
    )
    head: dict = field(default_factory=dict, metadata={"help": HEAD_OPTION_HELP})


@register_method("linear")
class LinearProbe(PromptMethod):
    """Head-only training; the image tower is frozen, so for classification the trainer may cache its features
    once. For segmentation the head is SETR's decoder on the frozen patch grid (VPT's "linear" row for dense
    tasks); the tower runs without autograd every step, since the grid of a random crop cannot be cached."""

    config_class = LinearConfig
    uses_image_features = True
    task_types: ClassVar[tuple[str, ...]] = ("classification", "segmentation")
    # A head on cached features converges in few epochs with Adam; SGD at the library default is far slower.
    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4}

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: LinearConfig) -> None:
        super().__init__(backbone, labels, config)
        self.head = task_head(backbone.visual, labels, config.head)
        self.dense = labels.task_type == "segmentation"
        if self.dense:
            if config.normalize:
                raise ConfigError("LinearConfig.normalize applies to pooled features; a segmentation head reads the "
                                  "patch grid. Drop normalize for segmentation tasks.")
            self.uses_image_features = False  # per-pixel training reads images (aligned crops), not cached features

    @torch.no_grad()
    def _frozen_outputs(self, images: torch.Tensor, blocks: tuple[int, ...]) -> dict[int, torch.Tensor]:
        return prompted_block_outputs(self.visual, None, images, blocks)

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
        if self.dense:
            return dense_forward(self.head, self.visual, lambda blocks: self._frozen_outputs(batch["image"], blocks),
                                 0, batch)
        logits = self.head(self._features(batch))
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}
