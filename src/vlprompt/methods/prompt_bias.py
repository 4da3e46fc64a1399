"""VPT + bias (KMnP/vpt transfer type ``prompt+bias``): visual prompts and every bias of the tower train together.

The prompts are VPT's own (methods/vpt.py); the biases are BitFit's (prompts/adapters.py ``tune_biases``) on a
private copy of the tower that shares its frozen weights with the caller's backbone. ``deep`` picks VPT-deep (the
default, the paper's main setting) or VPT-shallow prompts. The head is the official VPT head.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlprompt.backbones.base import Backbone
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import register_method
from vlprompt.methods.vpt import VisualPromptMethod, VPTConfig
from vlprompt.prompts.adapters import tune_biases
from vlprompt.prompts.heads import VPTHead
from vlprompt.prompts.lora import share_weights_copy


@dataclass
class PromptBiasConfig(VPTConfig):
    """VPT's options plus the prompt depth."""

    deep: bool = field(default=True, metadata={"help": "VPT-deep prompts (true) or VPT-shallow (false)"})


@register_method("prompt+bias")
class PromptBias(VisualPromptMethod):
    """VPT prompts + the tower's biases + the head train."""

    config_class = PromptBiasConfig

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: Any) -> None:
        self.deep = config.deep
        super().__init__(backbone, labels, config)
        self.visual = share_weights_copy(backbone.visual)
        tune_biases(self.visual)
        self.head = VPTHead(self.visual.feature_dim, labels.num_classes)

    def train(self, mode: bool = True) -> PromptBias:
        super().train(mode)
        self.visual.eval()  # dropout of the frozen tower stays off; only the prompts' dropout follows ``mode``
        return self
