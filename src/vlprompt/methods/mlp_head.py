"""Mlp-k, VPT Table 1's "Mlp-k" rows: a k-layer MLP head on frozen features (KMnP/vpt ``MODEL.MLP_NUM`` = k).

The head is the official one (prompts/heads.py): k hidden Linear(d, d) -> ReLU -> BatchNorm1d -> Dropout(0.1)
layers, then the class Linear. The tower is frozen, so the trainer may cache its features once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import PromptMethod, register_method
from vlprompt.prompts.heads import VPTHead, frozen_statistics


@dataclass
class MLPHeadConfig:
    """The MLP head's depth (official MODEL.MLP_NUM; the paper's table reports k = 3)."""

    k: int = field(default=3, metadata={"help": "hidden layers of the head (official MLP_NUM; Table 1's Mlp-3: 3)",
                                        "range": (0, None)})
    dropout: float = field(default=0.1, metadata={"help": "dropout after each hidden layer (official 0.1)",
                                                  "range": (0.0, 0.99)})


@register_method("mlp-k")
class MLPHead(PromptMethod):
    """Only the MLP head trains, on frozen (cacheable) image features."""

    config_class = MLPHeadConfig
    uses_image_features = True
    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: MLPHeadConfig) -> None:
        super().__init__(backbone, labels, config)
        self.head = VPTHead(backbone.visual.feature_dim, labels.num_classes, config.k, config.dropout)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's weights plus its BatchNorm statistics."""
        return {**super().trainable_state_dict(), **frozen_statistics(self.head, "head")}

    def forward(self, batch: dict) -> dict:
        features = batch.get("features")
        if features is None:
            with torch.no_grad():
                features = self.image_features(batch["image"])
        logits = self.head(features.to(self.head.last_layer.weight.dtype))
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}
