"""CoCoOp: a meta-net turns each image feature into one bias added to every context token.

Class features are then per image, so the text encoder runs on B×C prompts per batch: they go through it
as one batched call per class chunk (no per-image Python loop), with chunks sized so that one call holds
at most ``prompts_per_call`` prompts and, under autograd, recomputed in backward to bound memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import ValidatedConfig
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import register_method
from vlprompt.methods.clip import ClipMethod, text_memory_option
from vlprompt.methods.coop import build_context_prompt
from vlprompt.prompts.text_layout import CLASS_POSITIONS


@dataclass
class CoCoOpConfig(ValidatedConfig):
    """CoCoOp's options; defaults follow the paper (4 context tokens from "a photo of a"). Each field's help
    says what it does (``vlprompt list methods --options cocoop``)."""

    n_ctx: int = field(
        default=4,
        metadata={"help": "learned context tokens M (as CoOp: ignored when ctx_init gives words)", "range": (1, 76)},
    )
    ctx_init: str = field(
        default="a photo of a",
        metadata={"help": "words the context starts from, 'template', or '' for N(0, 0.02) (as CoOp)"},
    )
    class_position: str = field(
        default="end",
        metadata={"help": "where the class name sits", "choices": CLASS_POSITIONS},
    )
    prompts_per_call: int = field(
        default=2048,
        metadata={"help": "images x classes sent through the text encoder in one call at most",
                  "range": (1, None)},
    )
    text_memory_mb: float = text_memory_option()


@register_method("cocoop")
class CoCoOp(ClipMethod):
    config_class = CoCoOpConfig
    # CoCoOp trains few epochs on small batches (the paper: batch 1, 10 epochs); each step encodes B×C prompts.
    train_defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd", "lr": 0.002, "batch_size": 4, "epochs": 10, "weight_decay": 5e-4, "warmup_epochs": 1,
    }

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: CoCoOpConfig) -> None:
        super().__init__(backbone, labels, config)
        self.prompt = build_context_prompt(
            self.text, self.labels, config.ctx_init, config.n_ctx, config.class_position,
            memory_mb=config.text_memory_mb,
        )
        feature_dim = backbone.visual.feature_dim
        hidden = max(1, feature_dim // 16)
        self.meta_net = nn.Sequential(
            nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, self.text.width)
        ).to(self.prompt.ctx.device)

    def set_labels(self, labels: LabelSpace) -> None:
        super().set_labels(labels)
        self.prompt.set_classnames(self.text, self.labels.classnames)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.prompt.ctx, *self.meta_net.parameters()]

    def forward(self, batch: dict) -> dict:
        image = self.normalized_image_features(batch).to(self.prompt.ctx.device)
        bias = self.meta_net(image)
        chunk = max(1, self.config.prompts_per_call // image.shape[0])
        class_features = self.prompt(self.text, bias=bias, chunk=chunk)  # [B, C, D]
        logits = self.clip_logits(image, class_features)
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}
