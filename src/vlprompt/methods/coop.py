"""CoOp: learned context vectors in front of (or around) the class name, frozen CLIP, cross-entropy on s·cos.

ProGrad and KgCoOp are CoOp plus one loss term each, so they subclass this file's method and add only that.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.config_utils import check_choice, check_range
from vlprompt.data.base import LabelSpace
from vlprompt.losses import CLASSIFICATION_LOSSES, grouped_text_ce
from vlprompt.methods.base import register_method
from vlprompt.methods.zeroshot import ClipMethod
from vlprompt.prompts.text import (
    CLASS_POSITIONS,
    INIT_ALIGNS,
    ContextPrompt,
    EvalCache,
    hand_crafted_features,
    split_template,
)

TEMPLATE_INIT = "template"


@dataclass
class CoOpConfig:
    """CoOp's options; each field's help says what it does (``vlprompt list methods --options coop``)."""

    n_ctx: int = field(
        default=16,
        metadata={"help": (
            "learned context tokens M (with ctx_init words and ctx_init_align 'fit', M is their word count)"
        )},
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
        metadata={"help": "where the class name sits: end | middle | front"},
    )
    class_chunk: int = field(
        default=256,
        metadata={"help": "class prompts per text-encoder call (bounds memory for many classes)"},
    )
    text_loss_weight: float = field(
        default=0.0,
        metadata={"help": (
            "weight of an optional LASP-style text-to-text loss (soft class features classified among "
            "the hand-crafted features of all templates); 0 turns it off"
        )},
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
        )},
    )

    def __post_init__(self) -> None:
        where = type(self).__name__
        check_range(where, "n_ctx", self.n_ctx, 1, 76)
        check_choice(where, "ctx_init_align", self.ctx_init_align, INIT_ALIGNS)
        check_choice(where, "class_position", self.class_position, CLASS_POSITIONS)
        check_choice(where, "loss", self.loss, CLASSIFICATION_LOSSES)
        check_range(where, "class_chunk", self.class_chunk, 1)
        check_range(where, "text_loss_weight", self.text_loss_weight, 0.0)


def build_context_prompt(
    text,
    labels: LabelSpace,
    ctx_init: str,
    n_ctx: int,
    class_position: str = "end",
    class_specific: bool = False,
    class_chunk: int = 256,
    init_align: str = "fit",
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
    )


@register_method("coop")
class CoOp(ClipMethod):
    """Context optimisation: only the context vectors train; class features are cached during evaluation."""

    config_class = CoOpConfig
    # CoOp's recipe (SGD, lr 0.002, batch 32, cosine after one warm-up epoch); image features are cached
    # exactly, so augmentation settings do not apply unless feature_views > 1.
    train_defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd", "lr": 0.002, "batch_size": 32, "epochs": 50, "weight_decay": 5e-4, "warmup_epochs": 1,
    }

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: CoOpConfig) -> None:
        super().__init__(backbone, labels, config)
        self.prompt = build_context_prompt(
            self.text,
            labels,
            config.ctx_init,
            config.n_ctx,
            config.class_position,
            config.class_specific,
            config.class_chunk,
            config.ctx_init_align,
        )
        self._eval_cache = EvalCache()
        self._all_templates_key: tuple | None = None
        self._all_templates: torch.Tensor | None = None

    def set_labels(self, labels: LabelSpace) -> None:
        super().set_labels(labels)
        self.prompt.set_classnames(self.text, labels.classnames)
        self._eval_cache.clear()

    def class_dependent_parameter_names(self) -> set[str]:
        return {"prompt.ctx"} if self.config.class_specific else set()

    def class_features(self) -> torch.Tensor:
        """Normalised learned class features [C, D]; during evaluation computed once, not per batch."""
        if self.training or torch.is_grad_enabled():
            return self.prompt(self.text)
        key = EvalCache.key_for(self.prompt.classnames, [self.prompt.ctx])
        return self._eval_cache.get(key, lambda: self.prompt(self.text))

    def template_features(self) -> torch.Tensor:
        """Hand-crafted features of every template [T, C, D], for the optional text-to-text loss."""
        key = (tuple(self.labels.classnames), tuple(self.labels.templates), self.text_device())
        if self._all_templates_key != key:
            self._all_templates = hand_crafted_features(
                self.text, self.labels.classnames, self.labels.templates, self.config.class_chunk
            )
            self._all_templates_key = key
        return self._all_templates

    def base_outputs(self, batch: dict) -> dict:
        """Logits and cross-entropy, plus the pieces subclasses add their terms to."""
        image = self.normalized_image_features(batch)
        class_features = self.class_features()
        logits = self.clip_logits(image.to(class_features.device), class_features)
        loss = self.classification_loss(logits, batch, self.config.loss)
        if loss is not None and self.config.text_loss_weight > 0:
            text_loss = grouped_text_ce(class_features, self.template_features(), self.logit_scale)
            loss = loss + self.config.text_loss_weight * text_loss
        return {"loss": loss, "logits": logits, "image": image, "class_features": class_features}

    def forward(self, batch: dict) -> dict:
        outputs = self.base_outputs(batch)
        return {"loss": outputs["loss"], "logits": outputs["logits"]}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.prompt.ctx]
