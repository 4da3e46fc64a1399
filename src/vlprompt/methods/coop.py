"""CoOp: learned context vectors in front of (or around) the class name, frozen CLIP, cross-entropy on s·cos.

ProGrad and KgCoOp are CoOp plus one loss term each: they compose the same ContextPrompt (``context_prompt``)
and share ``context_outputs``, adding only their term, rather than subclassing CoOp.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import ValidatedConfig
from vlprompt.data.base import LabelSpace
from vlprompt.losses import CLASSIFICATION_LOSSES, grouped_text_ce
from vlprompt.methods.base import register_method
from vlprompt.methods.clip import ClipMethod, text_memory_option
from vlprompt.prompts.text import INIT_ALIGNS, ContextPrompt
from vlprompt.prompts.text_layout import CLASS_POSITIONS, split_template
from vlprompt.prompts.text_plan import DEFAULT_TEXT_MEMORY_MB

TEMPLATE_INIT = "template"
# CoOp's recipe (SGD, lr 0.002, batch 32, cosine after one warm-up epoch), shared by ProGrad and KgCoOp; image
# features are cached exactly, so augmentation settings do not apply unless feature_views > 1.
COOP_RECIPE: dict[str, Any] = {
    "optimizer": "sgd", "lr": 0.002, "batch_size": 32, "epochs": 50, "weight_decay": 5e-4, "warmup_epochs": 1,
}


@dataclass
class CoOpConfig(ValidatedConfig):
    """CoOp's options; each field's help says what it does (``vlprompt list methods --options coop``)."""

    n_ctx: int = field(
        default=16,
        metadata={"help": (
            "learned context tokens M (with ctx_init words and ctx_init_align 'fit', M is their word count)"
        ), "range": (1, 76)},
    )
    ctx_init: str = field(
        default="",
        metadata={"help": (
            "words to start from (e.g. 'a photo of a'); 'template' for the task's hand-crafted template "
            "(its words before the class name become the context, its text after it the suffix); '' for "
            "N(0, 0.02). Counted as the official code counts: M = the words, initialised from the first M "
            "tokens; tokens past them (a word that splits, 'pet,') stay as fixed prompt text"
        )},
    )
    class_specific: bool = field(
        default=False,
        metadata={"help": "one context per class (CSC); it cannot move to other classes"},
    )
    class_position: str = field(
        default="end",
        metadata={"help": "where the class name sits", "choices": CLASS_POSITIONS},
    )
    class_chunk: int = field(
        default=256,
        metadata={"help": "class prompts per text-encoder call without gradients and on the plain (unshared) path",
                  "range": (1, None)},
    )
    text_memory_mb: float = text_memory_option()
    text_loss_weight: float = field(
        default=0.0,
        metadata={"help": (
            "weight of an optional LASP-style text-to-text loss (soft class features classified among "
            "the hand-crafted features of all templates); 0 turns it off"
        ), "range": (0.0, None)},
    )
    loss: str = field(
        default="ce",
        metadata={
            "help": (
                "'ce' (cross-entropy over classes, the method's official loss) or 'sigmoid' (SigLIP's pairwise "
                "sigmoid loss with the model's logit bias, to train a SigLIP with its own objective)"
            ),
            "choices": CLASSIFICATION_LOSSES,
        },
    )
    ctx_init_align: str = field(
        default="fit",
        metadata={"help": (
            "'fit' (CoOp, CoCoOp, KgCoOp: M = the init words) or 'right' (ProGrad: n_ctx slots, zeros first, "
            "the words' embeddings in the last slots)"
        ), "choices": INIT_ALIGNS},
    )


def context_prompt(text, labels: LabelSpace, config: CoOpConfig) -> ContextPrompt:
    """The ContextPrompt a CoOp-style config describes (CoOp, ProGrad, KgCoOp)."""
    return build_context_prompt(
        text, labels, config.ctx_init, config.n_ctx, config.class_position, config.class_specific,
        config.class_chunk, config.ctx_init_align, config.text_memory_mb,
    )


def build_context_prompt(
    text,
    labels: LabelSpace,
    ctx_init: str,
    n_ctx: int,
    class_position: str = "end",
    class_specific: bool = False,
    class_chunk: int = 256,
    init_align: str = "fit",
    memory_mb: float = DEFAULT_TEXT_MEMORY_MB,
) -> ContextPrompt:
    """A ContextPrompt from CoOp-style options; ``ctx_init`` may be words, a template, or "template"."""
    words, suffix = ctx_init, "."
    if ctx_init.strip() == TEMPLATE_INIT:
        words, suffix = split_template(labels.templates[0])
    elif "{}" in ctx_init:
        words, suffix = split_template(ctx_init)
    return ContextPrompt(
        text,
        labels.classnames,
        n_ctx=n_ctx,
        init_words=words,
        suffix=suffix,
        position=class_position,
        class_specific=class_specific,
        class_chunk=class_chunk,
        init_align=init_align,
        memory_mb=memory_mb,
    )


def context_outputs(method: ClipMethod, batch: dict) -> dict:
    """CoOp's prediction for a ClipMethod holding a ContextPrompt at ``method.prompt`` (CoOp, ProGrad, KgCoOp
    compose the same prompt module and share this; each adds its own term): logits and cross-entropy (plus the
    optional text-to-text term), with the image and class features the added terms need."""
    image = method.normalized_image_features(batch)
    class_features = method.prompt.class_features(method.text)
    logits = method.clip_logits(image.to(class_features.device), class_features)
    loss = method.classification_loss(logits, batch, method.config.loss)
    if loss is not None and method.config.text_loss_weight > 0:
        text_loss = grouped_text_ce(class_features, method.template_features(), method.logit_scale)
        loss = loss + method.config.text_loss_weight * text_loss
    return {"loss": loss, "logits": logits, "image": image, "class_features": class_features}


def context_class_dependent(config: CoOpConfig) -> set[str]:
    """Class-specific context cannot move to other classes; shared context can."""
    return {"prompt.ctx"} if config.class_specific else set()


@register_method("coop")
class CoOp(ClipMethod):
    """Context optimisation: only the context vectors train; class features are cached during evaluation."""

    config_class = CoOpConfig
    train_defaults: ClassVar[dict[str, Any]] = COOP_RECIPE

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: CoOpConfig) -> None:
        super().__init__(backbone, labels, config)
        self.prompt = context_prompt(self.text, self.labels, config)

    def set_labels(self, labels: LabelSpace) -> None:
        super().set_labels(labels)
        self.prompt.set_classnames(self.text, self.labels.classnames)

    def class_dependent_parameter_names(self) -> set[str]:
        return context_class_dependent(self.config)

    def class_features(self) -> torch.Tensor:
        """Normalised learned class features [C, D]; during evaluation computed once, not per batch."""
        return self.prompt.class_features(self.text)

    def forward(self, batch: dict) -> dict:
        outputs = context_outputs(self, batch)
        return {"loss": outputs["loss"], "logits": outputs["logits"]}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.prompt.ctx]
