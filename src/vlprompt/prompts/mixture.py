"""A mixture of prompt experts: one ContextPrompt per template group and a router that picks k of them per image.

Mixing is done in feature space without materialising per-image class features: for normalised expert
features t_e and weights w_k of the selected experts,
    cos(v, Σ_k w_k t_k) = Σ_k w_k (v·t_k) / sqrt(Σ_k Σ_l w_k w_l (t_k·t_l)),
so the per-class Gram matrix of the experts (G×G×C, computed once per set of class features) and the
image-expert scores (B×G×C) give the exact logits at a cost independent of the feature width per image.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vlprompt.backbones.base import TextTower
from vlprompt.core.errors import ConfigError
from vlprompt.prompts.text import ContextPrompt
from vlprompt.prompts.text_layout import split_template
from vlprompt.prompts.text_plan import DEFAULT_TEXT_MEMORY_MB


@dataclass
class Routing:
    """Router output: all G logits (for the gating loss), the k chosen experts and their renormalised weights."""

    logits: torch.Tensor  # [B, G]
    experts: torch.Tensor  # [B, k] long
    weights: torch.Tensor  # [B, k], rows sum to 1


class PromptMixture(nn.Module):
    """G soft prompts, each initialised from the words of one template (its group's first), and a router."""

    def __init__(
        self,
        text: TextTower,
        classnames: Sequence[str],
        init_templates: Sequence[str],
        feature_dim: int,
        top_k: int = 2,
        class_chunk: int = 256,
        memory_mb: float = DEFAULT_TEXT_MEMORY_MB,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= len(init_templates):
            raise ConfigError(
                f"top_k = {top_k} must lie between 1 and the number of experts ({len(init_templates)}, one per "
                "template group); lower top_k or give more template groups."
            )
        self.top_k = top_k
        experts = []
        for template in init_templates:
            words, suffix = split_template(template)
            experts.append(
                ContextPrompt(
                    text, classnames, init_words=words, suffix=suffix, class_chunk=class_chunk, memory_mb=memory_mb
                )
            )
        self.experts = nn.ModuleList(experts)
        self.router = nn.Linear(feature_dim, len(experts)).to(experts[0].ctx.device)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def set_classnames(self, text: TextTower, classnames: Sequence[str]) -> None:
        for expert in self.experts:
            expert.set_classnames(text, classnames)

    def route(self, image: torch.Tensor) -> Routing:
        """Top-k experts of the router on the normalised image feature, weights softmax-renormalised over k."""
        logits = self.router(image)
        top, experts = logits.topk(self.top_k, dim=-1)
        return Routing(logits=logits, experts=experts, weights=top.softmax(dim=-1))

    def expert_features(self, text: TextTower, experts: Sequence[int]) -> torch.Tensor:
        """Normalised class features of the given experts: [len(experts), C, D]."""
        return torch.stack([self.experts[e](text) for e in experts])

    @staticmethod
    def gram(features: torch.Tensor) -> torch.Tensor:
        """Per-class dot products between experts: [E, C, D] -> [E, E, C]."""
        return torch.einsum("ecd,fcd->efc", features, features)

    @staticmethod
    def mixed_logits(
        image: torch.Tensor,
        features: torch.Tensor,
        slots: torch.Tensor,
        weights: torch.Tensor,
        scale: float,
        gram: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """s·cos(v, Σ_k w_k t_{slot_k}) for every image and class: [B, C].

        ``features`` [E, C, D] are the computed experts' class features, ``slots`` [B, k] index into them.
        """
        gram = PromptMixture.gram(features) if gram is None else gram
        scores = torch.einsum("bd,ecd->bec", image, features)  # [B, E, C]
        rows = torch.arange(image.shape[0], device=image.device)[:, None]
        chosen = scores[rows, slots]  # [B, k, C]
        numerator = torch.einsum("bk,bkc->bc", weights, chosen)
        pair_gram = gram[slots[:, :, None], slots[:, None, :]]  # [B, k, k, C]
        norm_sq = torch.einsum("bk,bl,bklc->bc", weights, weights, pair_gram)
        return scale * numerator / norm_sq.clamp_min(1e-12).sqrt()
