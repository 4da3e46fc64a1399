"""CLAP (Silva-Rodríguez et al., CVPR 2024, "A Closer Look at the Few-Shot Adaptation of Large Vision-Language
Models"): a linear probe started from the zero-shot class features, held near them by a class-adaptive constraint.

As in the official code (jusiro/CLAP, ``trainers/adapters.py``, CONSTRAINT "l2", INIT "ZS"):
- prototypes w_c start at t_c, the RAW (unnormalised) text features of the hand-crafted template(s), averaged
  over templates; logits = s·cos(f, w_c) with s the model's logit scale;
- loss = CE + mean_c λ_c·‖w_c − t_c‖²;
- λ_c = the zero-shot softmax probability of class c averaged over the support samples of class c (every augmented
  view is a sample), computed once before training and then fixed: the official default never runs the augmented
  Lagrangian's outer updates (its "adaptative" variant), so neither do we;
- SGD lr 0.1, batch 256, 300 epochs over 20 augmented views of the support set, cosine, one constant warm-up
  epoch at 1e-5, no weight decay.

Where we differ: an official epoch runs over all 20 views of every image; ours draws one cached view per image per
epoch, so the preset's 6,000 epochs give the official number of steps; our warm-up ramps linearly from 1e-5.
``constraint: false`` is the paper's ZS-LP baseline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import ValidatedConfig
from vlprompt.data.base import LabelSpace, TaskData
from vlprompt.losses import class_adaptive_penalty, class_confidence
from vlprompt.methods.base import register_method
from vlprompt.methods.clip import ClipMethod
from vlprompt.prompts.text import encode_text_embeddings, hand_crafted_features


@dataclass
class CLAPConfig(ValidatedConfig):
    """``constraint``: the class-adaptive penalty (false = ZS-LP); ``ensemble``: zero-shot features from all of the
    task's templates (the official ImageNet setting) instead of templates[0]; ``class_chunk``: prompts per
    text-encoder call."""

    constraint: bool = field(default=True, metadata={"help": "the class-adaptive penalty (false: the ZS-LP baseline)"})
    ensemble: bool = field(default=False, metadata={"help": "zero-shot features from all templates instead of templates[0]"})
    class_chunk: int = field(default=256, metadata={"help": "prompts per text-encoder call", "range": (1, None)})


@torch.no_grad()
def raw_class_features(text, classnames: list[str], templates: list[str], chunk: int) -> torch.Tensor:
    """Unnormalised text features averaged over templates [C, D] (CLAP's anchors keep CLIP's own norms)."""
    hand_crafted_features(text, classnames, templates[:1], chunk)  # checks that every prompt fits the context
    device = next(text.parameters()).device
    texts = [template.format(name) for template in templates for name in classnames]
    outputs = []
    for start in range(0, len(texts), chunk):
        ids = text.tokenize(texts[start : start + chunk]).to(device)
        outputs.append(encode_text_embeddings(text, text.embed_tokens(ids), ids).float())
    return torch.cat(outputs).view(len(templates), len(classnames), -1).mean(dim=0)


@register_method("clap")
class CLAP(ClipMethod):
    """Only the class prototypes train, on cached image features.

    Class names are tokenised as given, underscores included ("apple_pie"), as the official code does
    (jusiro/CLAP trainers/adapters.py formats the dataset's class names into the templates without cleaning them),
    unlike the CoOp family's '_' -> ' '.
    """

    config_class = CLAPConfig
    classname_cleaning = "none"
    train_defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 256, "epochs": 300,
        "warmup_epochs": 1, "warmup_start_factor": 1e-4, "augment": "crop_flip", "feature_views": 20,
    }

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: CLAPConfig) -> None:
        super().__init__(backbone, labels, config)
        templates = labels.templates if config.ensemble else labels.templates[:1]
        anchors = raw_class_features(self.text, self.labels.classnames, templates, config.class_chunk)
        self.register_buffer("anchors", anchors, persistent=False)
        self.prototypes = nn.Parameter(anchors.clone())
        self.register_buffer("multipliers", torch.zeros(labels.num_classes), persistent=False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.prototypes]

    def class_dependent_parameter_names(self) -> set[str]:
        return {"prototypes"}

    def prototype_logits(self, features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        image = nn.functional.normalize(features.float(), dim=-1)
        return self.clip_logits(image, nn.functional.normalize(prototypes, dim=-1))

    def prepare(self, task: TaskData, trainer: Any) -> None:
        """λ from the zero-shot predictions on every cached view of the support set."""
        features = trainer.cached_features(task.train, train=True)
        labels = torch.tensor(task.train.labels, dtype=torch.long)
        if features.dim() == 3:
            labels = labels.repeat(features.shape[0])
            features = features.flatten(0, 1)
        with torch.no_grad():
            logits = self.prototype_logits(features.to(self.anchors.device), self.anchors)
        self.multipliers = class_confidence(logits, labels.to(logits.device), self.labels.num_classes)

    def penalty(self) -> torch.Tensor:
        return class_adaptive_penalty(self.prototypes, self.anchors, self.multipliers)

    def forward(self, batch: dict) -> dict:
        features = batch.get("features")
        if features is None:
            with torch.no_grad():
                features = self.image_features(batch["image"])
        logits = self.prototype_logits(features.to(self.prototypes.device), self.prototypes)
        loss = self.cross_entropy(logits, batch)
        if loss is not None and self.config.constraint:
            loss = loss + self.penalty()
        return {"loss": loss, "logits": logits}
