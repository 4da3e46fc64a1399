"""Side-tuning, VPT Table 1's "Sidetune" row (KMnP/vpt transfer type ``side``, ``vit_models.py``).

The image tower stays frozen (and in eval mode); a side network sees the same images, its feature is projected to
the tower's width and blended with the frozen feature through sigmoid(alpha) (prompts/side.py), and the official VPT
head classifies the blend. The side network, its projection, alpha and the head train.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import PromptMethod, register_method
from vlprompt.prompts.heads import VPTHead, frozen_statistics
from vlprompt.prompts.side import OFFICIAL_SIDE, SideNetwork


@dataclass
class SidetuneConfig:
    """The side network (official: ImageNet AlexNet features)."""

    side_model: str = field(default=OFFICIAL_SIDE, metadata={
        "help": "'alexnet' (torchvision AlexNet features + avgpool, the official side network) or any timm model name"})
    side_pretrained: bool = field(default=True, metadata={
        "help": "start the side network from its ImageNet weights (local cache or download); false: random init"})
    side_weights: str | None = field(default=None, metadata={
        "help": "a local weights file for the side network (safetensors or a state dict), instead of the cache"})


@register_method("sidetune")
class Sidetune(PromptMethod):
    """Frozen features blended with a trained side network's; a VPT head on the blend."""

    config_class = SidetuneConfig
    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: SidetuneConfig) -> None:
        super().__init__(backbone, labels, config)
        visual = backbone.visual
        self.side = SideNetwork(config.side_model, visual.feature_dim, backbone.preprocess.image_size,
                                config.side_pretrained, config.side_weights)
        self.head = VPTHead(visual.feature_dim, labels.num_classes)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained tensors plus the side network's and the head's running statistics."""
        return {**super().trainable_state_dict(), **frozen_statistics(self.side, "side"),
                **frozen_statistics(self.head, "head")}

    def forward(self, batch: dict) -> dict:
        images = batch["image"]
        with torch.no_grad():
            frozen = self.visual(images)
        logits = self.head(self.side(images, frozen.to(self.side.alpha.dtype)))
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}
