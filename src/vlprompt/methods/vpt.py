"""VPT (visual prompt tuning): learned tokens in a frozen ViT, read out by the backbone's pooling, a Linear head.

Only the prompts (+ optional projection) and the head train; the backbone stays frozen and in eval mode.
SPT (methods/spt.py) is this same model with prompts initialised from the data's own tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.config_utils import check_range
from vlprompt.data.base import LabelSpace
from vlprompt.errors import ConfigError
from vlprompt.methods.base import PromptMethod, register_method
from vlprompt.methods.heads import HEAD_OPTION_HELP, dense_forward, task_head
from vlprompt.prompts.visual import VisualPrompts, prompted_block_outputs, prompted_forward

log = logging.getLogger(__name__)


@dataclass
class VPTConfig:
    """VPT's options; each field's help says what it does (``vlprompt list methods --options vpt-deep``).
    Per-block NMI during training is a trainer callback (analysis/nmi.py NMICallback), not a method option; a
    run config builds it from ``method_options.nmi_every`` / ``nmi_images`` / ``nmi_normalization``."""

    num_tokens: int = field(default=10, metadata={"help": "prompt tokens p per insertion point"})
    dropout: float | None = field(
        default=None,
        metadata={"help": "dropout on the prompts; unset means VPT's defaults (0.1 deep, 0 shallow)"},
    )
    projection_dim: int | None = field(
        default=None,
        metadata={"help": (
            "learn prompts at width k, mapped to the backbone's width d by a Linear (unset: at d)"
        )},
    )
    pool_prompts: bool = field(
        default=True,
        metadata={"help": (
            "whether prompt tokens enter a mean-pooled readout (MAE backbones; VPT includes them; CLS "
            "readouts ignore it)"
        )},
    )

    head: dict = field(default_factory=dict, metadata={"help": HEAD_OPTION_HELP})

    def __post_init__(self) -> None:
        where = type(self).__name__
        if self.num_tokens < 1:
            raise ConfigError(
                f"{where}.num_tokens = {self.num_tokens}: a visual prompt needs at least 1 token; VPT uses 1-200 "
                "(try 10)."
            )
        if self.dropout is not None:
            check_range(where, "dropout", self.dropout, 0.0, 0.99)
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ConfigError(
                f"{where}.projection_dim = {self.projection_dim}: use a positive width or leave it unset."
            )


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
