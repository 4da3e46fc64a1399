"""The readout end of timm towers (ViT and EVA) that token pooling does not cover: attention pooling and the head.

Kept apart from the adapters so both timm adapters read tokens out the same way (CLS / mean pooling is
``timm_vit.pool_tokens``), and so that the rule for prompt tokens is written once:
- MAP pooling (timm ``AttentionPoolLatent``, SigLIP): the learned latent query attends over the tokens the library
  gives it (``pool_include_prefix`` decides about prefix tokens) and, when ``pool_prompts``, over the prompt tokens
  too. Leaving prompts out is the same as masking their keys, so with prompts excluded the readout is exactly the
  library's over [prefix?, patches].
- The head: a tower used alone drops timm's classifier (methods bring their own); inside open_clip the trunk's head
  is CLIP's image projection and is kept (``keep_head``).
"""

from __future__ import annotations

import torch
from torch import nn

from vlprompt.core.errors import VlpromptError


def map_pool(
    attn_pool: nn.Module,
    tokens: torch.Tensor,
    num_prefix_tokens: int,
    num_prompts: int,
    pool_prompts: bool,
    include_prefix: bool,
) -> torch.Tensor:
    """Attention pooling over [prefix (if the library includes it), prompts (if ``pool_prompts``), patches]."""
    parts = []
    if include_prefix:
        parts.append(tokens[:, :num_prefix_tokens])
    if pool_prompts and num_prompts:
        if getattr(attn_pool, "pos_embed", None) is not None:
            raise VlpromptError(
                "This attention-pooling head adds its own position embedding to the pooled tokens, so prompt "
                "tokens cannot enter it; set pool_prompts=false (the query then reads the patch tokens only)."
            )
        parts.append(tokens[:, num_prefix_tokens : num_prefix_tokens + num_prompts])
    parts.append(tokens[:, num_prefix_tokens + num_prompts :])
    return attn_pool(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])


def timm_pooling(model: nn.Module, pooling: str | None) -> str:
    """The adapter's pooling name ("cls", "mean", "map") from timm's ``global_pool`` unless forced."""
    if pooling is None:
        if getattr(model, "attn_pool", None) is not None:
            return "map"
        names = {"token": "cls", "avg": "mean"}
        if model.global_pool not in names:
            raise VlpromptError(
                f"This timm model uses global_pool={model.global_pool!r}; vlprompt reads out with 'token' (CLS), "
                "'avg' (mean of patch tokens) or 'map' (attention pooling). Create it with one of those."
            )
        return names[model.global_pool]
    if pooling not in ("cls", "mean"):
        raise VlpromptError(f"A timm tower's pooling must be 'cls' or 'mean' when forced, got {pooling!r}.")
    return pooling


def head_width(model: nn.Module, keep_head: bool) -> int:
    """Width of ``readout``'s output: timm's num_features, or the kept head's output width."""
    head = model.get_classifier()
    if keep_head and isinstance(head, nn.Linear):
        return int(head.out_features)
    return int(model.num_features)


def adopt_timm_model(tower: nn.Module, model: nn.Module, pooling: str | None, keep_head: bool) -> None:
    """Set the shape a VisionTower declares from a timm ViT-family model (VisionTransformer, Eva): width, blocks,
    prefix tokens, patch size, readout and feature width; without ``keep_head`` the classifier is dropped (the
    adapter outputs pre-logits features; methods own their heads)."""
    tower.pooling = timm_pooling(model, pooling)
    classifier = model.get_classifier()
    if not keep_head and classifier is not None and not isinstance(classifier, nn.Identity):
        model.reset_classifier(0)
    tower.model = model
    tower.keep_head = keep_head
    tower.width = int(model.embed_dim)
    tower.num_blocks = len(model.blocks)
    tower.num_prefix_tokens = int(model.num_prefix_tokens)
    tower.patch_size = int(model.patch_embed.patch_size[0])
    tower.feature_dim = head_width(model, keep_head)
    tower._pool_include_prefix = bool(getattr(model, "pool_include_prefix", False))
