"""Mixture of prompt experts (MoCoOp): one soft prompt per group of related hand-crafted templates.

L = L_ce + λ1·L_text + λ2·L_gate:
- L_ce on s·cos(v, mixed class features) of the router's top-k experts;
- L_text, the semantically grouped text loss: each expert's class features must classify as their own class
  among the hard features of every template of that expert's group;
- L_gate = KL(W_hard ‖ W_router), W_hard = softmax_g(s·cos(v, h_g)), h_g the group's hard prototype of the
  ground-truth class (as the reference code does; ``gate_prototype="mean"`` averages over classes too).
Training encodes only the experts some image of the batch selected; evaluation caches every expert's class
features once and, per image, reads only its k experts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import ValidatedConfig
from vlprompt.core.errors import ConfigError, unknown_name
from vlprompt.data.base import LabelSpace
from vlprompt.losses import gating_kl, grouped_text_ce
from vlprompt.methods.base import register_method
from vlprompt.methods.clip import ClipMethod, text_memory_option
from vlprompt.prompts.mixture import PromptMixture
from vlprompt.prompts.text import EvalCache, hand_crafted_features


@dataclass
class MoCoOpConfig(ValidatedConfig):
    """Mixture of prompt experts; each field's help says what it does (``vlprompt list methods --options
    mocoop``)."""

    groups: list[str] = field(
        default_factory=list,
        metadata={"help": (
            "names of the label space's template groups to use as experts (empty: all of them)"
        )},
    )
    top_k: int = field(default=2, metadata={"help": "experts mixed per image", "range": (1, None)})
    lambda_text: float = field(
        default=5.0,
        metadata={"help": "λ1, weight of the text-alignment loss (reference: 5)", "range": (0.0, None)},
    )
    lambda_gate: float = field(default=1.0, metadata={"help": "λ2, weight of the gate loss (reference: 1)",
                                                       "range": (0.0, None)})
    gate_prototype: str = field(
        default="class",
        metadata={"help": (
            "'class' (ground-truth class prototype, as the reference code) or 'mean' (over classes)"
        ), "choices": ("class", "mean")},
    )
    class_chunk: int = field(
        default=256,
        metadata={"help": "class prompts per text-encoder call without gradients", "range": (1, None)},
    )
    text_memory_mb: float = text_memory_option()


def select_groups(labels: LabelSpace, names: list[str]) -> dict[str, list[str]]:
    """The template groups that become experts, checked: they exist and none is empty."""
    available = labels.template_groups
    if not available:
        raise ConfigError(
            "Method 'mocoop' needs template groups: the task's LabelSpace.template_groups is empty. Give the "
            "dataset groups of related templates (e.g. one per style), or use coop / kgcoop instead."
        )
    for name in names:
        if name not in available:
            raise unknown_name("template group", name, available)
    chosen = {name: list(available[name]) for name in (names or available)}
    for name, templates in chosen.items():
        if not templates:
            raise ConfigError(f"Template group {name!r} is empty; give it at least one template with '{{}}'.")
    return chosen


@register_method("mocoop")
class MoCoOp(ClipMethod):
    config_class = MoCoOpConfig
    train_defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd", "lr": 0.002, "batch_size": 32, "epochs": 50, "weight_decay": 5e-4, "warmup_epochs": 1,
    }

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: MoCoOpConfig) -> None:
        super().__init__(backbone, labels, config)
        self.groups = select_groups(labels, list(config.groups))
        self.mixture = PromptMixture(
            self.text,
            self.labels.classnames,
            [templates[0] for templates in self.groups.values()],
            backbone.visual.feature_dim,
            top_k=config.top_k,
            class_chunk=config.class_chunk,
            memory_mb=config.text_memory_mb,
        )
        self._eval_cache = EvalCache()
        self._hard_key: tuple | None = None
        self._hard: list[torch.Tensor] = []

    def set_labels(self, labels: LabelSpace) -> None:
        super().set_labels(labels)
        self.mixture.set_classnames(self.text, self.labels.classnames)
        self._eval_cache.clear()

    def group_hard_features(self) -> list[torch.Tensor]:
        """Per group, the hard features of each of its templates for every class: G × [T_g, C, D]."""
        key = (tuple(self.labels.classnames), self.text_device())
        if self._hard_key != key:
            self._hard = [
                hand_crafted_features(self.text, self.labels.classnames, templates, self.config.class_chunk)
                for templates in self.groups.values()
            ]
            self._hard_key = key
        return self._hard

    def hard_gate_weights(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """W_hard [B, G] = softmax over groups of s·cos(v, h_g)."""
        prototypes = torch.stack([hard.mean(dim=0) for hard in self.group_hard_features()])  # [G, C, D]
        if self.config.gate_prototype == "class":
            per_image = nn.functional.normalize(prototypes[:, label], dim=-1)  # [G, B, D]
            cos = torch.einsum("bd,gbd->bg", image, per_image)
        else:
            cos = image @ nn.functional.normalize(prototypes.mean(dim=1), dim=-1).t()
        return (self.logit_scale * cos).softmax(dim=-1)

    def _cached_experts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every expert's class features and their Gram matrix, computed once per evaluation."""
        params = [expert.ctx for expert in self.mixture.experts]
        key = EvalCache.key_for(self.labels.classnames, params)

        def compute():
            features = self.mixture.expert_features(self.text, range(self.mixture.num_experts))
            return features, PromptMixture.gram(features)

        return self._eval_cache.get(key, compute)

    def forward(self, batch: dict) -> dict:
        image = self.normalized_image_features(batch).to(self.mixture.router.weight.device)
        routing = self.mixture.route(image)
        label = batch.get("label")
        if self.training or torch.is_grad_enabled():
            active = torch.unique(routing.experts).tolist()
            features = self.mixture.expert_features(self.text, active)
            position = torch.full((self.mixture.num_experts,), -1, dtype=torch.long, device=image.device)
            position[active] = torch.arange(len(active), device=image.device)
            slots, gram = position[routing.experts], None
        else:
            active = []
            features, gram = self._cached_experts()
            slots = routing.experts
        logits = PromptMixture.mixed_logits(image, features, slots, routing.weights, self.logit_scale, gram)
        logits = logits + self.logit_bias  # the model's bias (SigLIP), as in clip_logits
        outputs = {"logits": logits, "experts": routing.experts, "weights": routing.weights}
        loss = self.cross_entropy(logits, batch)
        if loss is not None and self.training and active:
            hard = self.group_hard_features()
            text_losses = [grouped_text_ce(features[i], hard[g], self.logit_scale) for i, g in enumerate(active)]
            outputs["loss_text"] = torch.stack(text_losses).mean()
            outputs["loss_gate"] = gating_kl(self.hard_gate_weights(image, label), routing.logits)
            loss = loss + self.config.lambda_text * outputs["loss_text"] + self.config.lambda_gate * outputs["loss_gate"]
        outputs["loss"] = loss
        return outputs
