"""VPT (visual prompt tuning): learned tokens in a frozen ViT, read out by the backbone's pooling, a Linear head.

Only the prompts (+ optional projection) and the head train; the backbone stays frozen and in eval mode.
SPT (methods/spt.py) is this same model with prompts initialised from the data's own tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.analysis.nmi import NORMALIZATIONS, method_nmi, nmi_record
from vlprompt.backbones.base import Backbone
from vlprompt.config_utils import check_choice, check_range
from vlprompt.data.base import ImageDataset, LabelSpace
from vlprompt.errors import ConfigError
from vlprompt.methods.base import PromptMethod, register_method
from vlprompt.prompts.visual import VisualPrompts, prompted_forward

log = logging.getLogger(__name__)


@dataclass
class VPTConfig:
    """VPT's options; each field's help says what it does (``vlprompt list methods --options vpt-deep``)."""

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
    nmi_every: int = field(
        default=0,
        metadata={"help": "log per-block NMI between prompt and patch tokens every that many steps (0: off)"},
    )
    nmi_images: int = field(default=16, metadata={"help": "fixed training images the NMI is measured on"})
    nmi_normalization: str = field(default="min", metadata={"help": "NMI normalisation: min | sqrt | mean"})

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
        check_range(where, "nmi_every", self.nmi_every, 0)
        check_range(where, "nmi_images", self.nmi_images, 1)
        check_choice(where, "nmi_normalization", self.nmi_normalization, NORMALIZATIONS)


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
        self._nmi_probe: torch.Tensor | None = None

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return prompted_forward(self.visual, self.prompts, images, pool_prompts=self.config.pool_prompts)

    def forward(self, batch: dict) -> dict:
        logits = self.head(self.encode(batch["image"]))
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}

    # ----- trainer hooks: NMI logging on a fixed probe batch -----
    def setup(self, train_dataset: ImageDataset, trainer: Any) -> None:
        if self.config.nmi_every > 0:
            count = min(self.config.nmi_images, len(train_dataset))
            self._nmi_probe = torch.stack([train_dataset[i][0] for i in range(count)])
            self._log_nmi(0, trainer)

    def on_step_end(self, step: int, trainer: Any) -> None:
        if self.config.nmi_every > 0 and self._nmi_probe is not None and step % self.config.nmi_every == 0:
            self._log_nmi(step, trainer)

    def _log_nmi(self, step: int, trainer: Any) -> None:
        values = method_nmi(self, self._nmi_probe, self.config.nmi_normalization)
        trainer.log_metrics({"step": step, **nmi_record(values)})


@register_method("vpt-shallow")
class VPTShallow(VisualPromptMethod):
    """p prompts inserted once after the prefix tokens; they pass through every block."""

    deep = False


@register_method("vpt-deep")
class VPTDeep(VisualPromptMethod):
    """A fresh set of p prompts at the input of every block (N*p*d prompt parameters)."""

    deep = True
