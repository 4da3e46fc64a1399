"""VPT (visual prompt tuning): learned tokens in a frozen ViT, read out by the backbone's pooling, a Linear head.

Only the prompts (+ optional projection) and the head train; the backbone stays frozen and in eval mode.
SPT (methods/spt.py) is this same model with prompts initialised from the data's own tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.config_utils import ValidatedConfig, option
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import PromptMethod, register_method
from vlprompt.prompts.visual import VisualPrompts, prompted_forward

log = logging.getLogger(__name__)


@dataclass
class VPTConfig(ValidatedConfig):
    """VPT's options; each field's help says what it does (``vlprompt list methods --options vpt-deep``).
    Per-block NMI during training is a trainer callback (analysis/nmi.py NMICallback) set by the run config's
    ``nmi`` section, not a method option."""

    num_tokens: int = option(10, help="prompt tokens p per insertion point (VPT uses 1-200)", range=(1, None))
    dropout: float | None = option(
        None, help="dropout on the prompts; unset means VPT's defaults (0.1 deep, 0 shallow)", range=(0.0, 0.99)
    )
    projection_dim: int | None = option(
        None, help="learn prompts at width k, mapped to the backbone's width d by a Linear (unset: at d)",
        range=(1, None),
    )
    pool_prompts: bool = option(
        True,
        help=("whether prompt tokens enter a mean-pooled readout (MAE backbones; VPT includes them; CLS "
              "readouts ignore it)"),
    )


class VisualPromptMethod(PromptMethod):
    """Shared VPT/SPT model; subclasses fix ``deep``."""

    config_class: ClassVar[type] = VPTConfig
    deep: ClassVar[bool] = False
    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4}

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: Any) -> None:
        super().__init__(backbone, labels, config)
        visual = backbone.visual
        dropout = config.dropout if config.dropout is not None else (0.1 if self.deep else 0.0)
        self.prompts = VisualPrompts(
            num_tokens=config.num_tokens,
            width=visual.width,
            depth=visual.num_blocks if self.deep else 1,
            dropout=dropout,
            projection_dim=config.projection_dim,
            patch_size=visual.patch_size,
        )
        self.head = nn.Linear(visual.feature_dim, labels.num_classes)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return prompted_forward(self.visual, self.prompts, images, pool_prompts=self.config.pool_prompts)

    def forward(self, batch: dict) -> dict:
        logits = self.head(self.encode(batch["image"]))
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}


@register_method("vpt-shallow")
class VPTShallow(VisualPromptMethod):
    """p prompts inserted once after the prefix tokens; they pass through every block."""

    deep = False


@register_method("vpt-deep")
class VPTDeep(VisualPromptMethod):
    """A fresh set of p prompts at the input of every block (N*p*d prompt parameters)."""

    deep = True
