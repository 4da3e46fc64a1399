"""VPT (visual prompt tuning): learned tokens in a frozen ViT, read out by the backbone's pooling, a Linear head.

Only the prompts (+ optional projection) and the head train; the backbone stays frozen and in eval mode.
SPT (methods/spt.py) is this same model with prompts initialised from the data's own tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.config_utils import ValidatedConfig, option
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import PromptMethod, register_method
from vlprompt.methods.heads import HEAD_OPTION_HELP, dense_forward, task_head
from vlprompt.prompts.visual import VisualPrompts, prompted_block_outputs, prompted_forward

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
        help=("whether prompt tokens enter a mean-pooled readout (MAE backbones; VPT includes them) or the keys "
              "of an attention-pooled (MAP, SigLIP) readout; CLS readouts ignore it"),
    )

    head: dict = option(help=HEAD_OPTION_HELP, default_factory=dict)


class VisualPromptMethod(PromptMethod):
    """Shared VPT/SPT model; subclasses fix ``deep``."""

    config_class: ClassVar[type] = VPTConfig
    deep: ClassVar[bool] = False
    task_types: ClassVar[tuple[str, ...]] = ("classification", "segmentation")
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
        self.head = task_head(visual, labels, config.head)
        self.dense = labels.task_type == "segmentation"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled image features (the classification readout's input)."""
        return prompted_forward(self.visual, self.prompts, images, pool_prompts=self.config.pool_prompts)

    def forward(self, batch: dict) -> dict:
        images = batch["image"]
        if self.dense:
            return dense_forward(self.head, self.visual,
                                 lambda blocks: prompted_block_outputs(self.visual, self.prompts, images, blocks),
                                 self.prompts.num_tokens, batch)
        logits = self.head(self.encode(images))
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}


@register_method("vpt-shallow")
class VPTShallow(VisualPromptMethod):
    """p prompts inserted once after the prefix tokens; they pass through every block."""

    deep = False


@register_method("vpt-deep")
class VPTDeep(VisualPromptMethod):
    """A fresh set of p prompts at the input of every block (N*p*d prompt parameters)."""

    deep = True
