"""Adapter over timm's ``VisionTransformer``: the token pipeline split into embed -> blocks -> finalize.

The adapter calls the model's own submodules (``patch_embed``, ``_pos_embed``, ``patch_drop``, ``norm_pre``,
``blocks``, ``norm``, ``fc_norm``) in the order timm's ``forward_features`` + ``forward_head(pre_logits=True)``
does, so that with no prompts the features equal timm's own. The classifier head is dropped: methods bring
their own head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vlprompt.backbones.base import Backbone, PreprocessConfig, VisionTower
from vlprompt.errors import VlpromptError

_TIMM_POOLS = {"token": "cls", "avg": "mean"}


def pool_tokens(
    tokens: torch.Tensor,
    pooling: str,
    num_prefix_tokens: int,
    num_prompts: int,
    pool_prompts: bool,
    include_prefix: bool = False,
) -> torch.Tensor:
    """CLS pooling takes token 0; mean pooling averages the patches, plus prompts / prefix when asked."""
    if pooling == "cls":
        return tokens[:, 0]
    patches = tokens[:, num_prefix_tokens + num_prompts :]
    parts = []
    if include_prefix:
        parts.append(tokens[:, :num_prefix_tokens])
    if pool_prompts and num_prompts:
        parts.append(tokens[:, num_prefix_tokens : num_prefix_tokens + num_prompts])
    if parts:
        patches = torch.cat(parts + [patches], dim=1)
    return patches.mean(dim=1)


class TimmVisionTower(VisionTower):
    """A timm ViT (cls / register tokens, with or without class-token position embedding)."""

    def __init__(self, model: nn.Module, pooling: str | None = None) -> None:
        super().__init__()
        if getattr(model, "attn_pool", None) is not None:
            raise VlpromptError(
                "This timm ViT pools with an attention head (global_pool='map'), which prompt methods cannot read "
                "out per token. Create it with global_pool='token' or 'avg' (timm.create_model(..., "
                "global_pool='avg')), or pick a ViT without a MAP head."
            )
        if getattr(model, "dist_token", None) is not None:
            raise VlpromptError(
                "This timm ViT is a distilled DeiT (class + distillation token, averaged heads); vlprompt reads out "
                "one class token. Use the non-distilled variant (e.g. 'deit_base_patch16_224')."
            )
        if pooling is None:
            if model.global_pool not in _TIMM_POOLS:
                raise VlpromptError(
                    f"This timm ViT uses global_pool={model.global_pool!r}; vlprompt reads out with 'token' (CLS) "
                    "or 'avg' (mean of patch tokens). Create the model with global_pool='token' or 'avg'."
                )
            pooling = _TIMM_POOLS[model.global_pool]
        if pooling not in ("cls", "mean"):
            raise VlpromptError(f"TimmVisionTower pooling must be 'cls' or 'mean', got {pooling!r}.")
        if model.get_classifier() is not None and not isinstance(model.get_classifier(), nn.Identity):
            model.reset_classifier(0)  # the adapter outputs pre-logits features; methods own their heads
        self.model = model
        self.pooling = pooling
        self.width = int(model.embed_dim)
        self.num_blocks = len(model.blocks)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.feature_dim = int(model.num_features)
        self._pool_include_prefix = bool(getattr(model, "pool_include_prefix", False))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        tokens = model.patch_embed(images)
        tokens = model._pos_embed(tokens)
        tokens = model.patch_drop(tokens)
        return model.norm_pre(tokens)

    def block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.blocks[index](tokens)

    def block_modules(self) -> Sequence[nn.Module]:
        return list(self.model.blocks)

    def finalize(
        self, tokens: torch.Tensor, num_prompts: int = 0, pool_prompts: bool = False
    ) -> torch.Tensor:
        tokens = self.model.norm(tokens)
        pooled = pool_tokens(
            tokens, self.pooling, self.num_prefix_tokens, num_prompts, pool_prompts, self._pool_include_prefix
        )
        return self.model.fc_norm(pooled)


def timm_preprocess(model: nn.Module) -> PreprocessConfig:
    """Image preparation from timm's own pretrained config (resolve_data_config)."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    # the pretrained config keeps its native size when the model was built for another one (img_size=...)
    native = getattr(getattr(model, "patch_embed", None), "img_size", None)
    image_size = int(native[-1]) if native is not None else int(config["input_size"][-1])
    return PreprocessConfig(
        image_size=image_size,
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        interpolation=str(config.get("interpolation", "bicubic")),
        crop_pct=float(config.get("crop_pct", 1.0)),
    )


def wrap_timm_vit(model: nn.Module, backbone_id: str, kind: str = "vit") -> Backbone:
    """A timm ``VisionTransformer`` as a Backbone. ``kind="mae"`` reads out the mean of the patch tokens."""
    if kind not in ("vit", "mae"):
        raise VlpromptError(f"wrap_timm_vit: kind must be 'vit' or 'mae', got {kind!r}.")
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise VlpromptError(
            f"Backbone '{backbone_id}' is a timm {type(model).__name__}, not a VisionTransformer; prompt methods "
            "need a plain ViT token pipeline. Pick a 'vit_*' / 'deit*' architecture."
        )
    tower = TimmVisionTower(model, pooling="mean" if kind == "mae" else None)
    return Backbone(
        backbone_id=backbone_id,
        visual=tower,
        preprocess=timm_preprocess(model),
        kind=kind,
        extra={"model": model},
    )
