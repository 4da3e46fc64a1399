"""Adapter over timm's ``VisionTransformer``: the token pipeline split into embed -> blocks -> finalize.

The adapter calls the model's own submodules (``patch_embed``, ``_pos_embed``, ``patch_drop``, ``norm_pre``,
``blocks``, ``norm``, ``fc_norm``) in the order timm's ``forward_features`` + ``forward_head(pre_logits=True)``
does, so that with no prompts the features equal timm's own. The classifier head is dropped: methods bring
their own head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vlprompt.backbones.base import TOWER_SITES, Backbone, BlockSites, PreprocessConfig, VisionTower
from vlprompt.backbones.hub import cached_hf_file, cached_url_file, hub_reachable
from vlprompt.backbones.loading import as_bool, close_names, missing_weights, wrong_checkpoint
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

    def block_sites(self, index: int) -> BlockSites:
        """timm's pre-norm ``Block``: norm1 -> attn (qkv packed d -> 3d, proj) -> norm2 -> mlp (fc1, fc2).

        Blocks of other layouts (ResPostBlock, ParallelScalingBlock...) and gated MLPs are refused or lose the
        places they do not have, rather than being guessed at."""
        from timm.layers import Mlp
        from timm.models.vision_transformer import Attention, Block

        block = self.model.blocks[index]
        if type(block) is not Block:
            raise VlpromptError(
                f"Block {index} of this timm ViT is a {type(block).__name__}, not timm's pre-norm Block; "
                "parameter-efficient modules (bias, adapter, AdaptFormer, SSF, LoRA, LayerNorm tuning) attach to "
                "the standard layout only. Use a 'vit_*' architecture built with the default block_fn."
            )
        places: dict[str, tuple[nn.Module, str]] = {
            "norm_attn": (block, "norm1"), "attn": (block, "attn"), "norm_mlp": (block, "norm2"),
            "mlp": (block, "mlp"),
        }
        if isinstance(block.attn, Attention):
            places["attn_qkv"] = (block.attn, "qkv")
            places["attn_out"] = (block.attn, "proj")
        if type(block.mlp) is Mlp:
            places["mlp_in"] = (block.mlp, "fc1")
            places["mlp_out"] = (block.mlp, "fc2")
        return BlockSites(places)

    def tower_sites(self) -> BlockSites:
        model = self.model
        places: dict[str, tuple[nn.Module, str]] = {"patch_proj": (model.patch_embed, "proj"), "norm_final": (model, "norm")}
        if model.cls_token is not None:
            places["class_token"] = (model, "cls_token")
        return BlockSites(places, known=TOWER_SITES)

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


# ----- loading by name (timm:<arch>[.<tag>]) -----
def create_timm(spec: str, name: str, **kwargs: Any) -> Backbone:
    """``timm:<arch>[.<tag>]``: weights from ``weights=PATH``, the local HF / torch-hub cache, or the hub when
    reachable; ``pretrained=False`` or ``random_init=True`` for random init."""
    import timm

    weights = kwargs.pop("weights", None)
    random_init = as_bool(kwargs.pop("random_init", False), "random_init")
    pretrained = as_bool(kwargs.pop("pretrained", True), "pretrained") and not random_init
    arch, _, tag = spec.partition(".")
    if not timm.is_model(arch):
        raise VlpromptError(
            f"timm has no architecture '{arch}' (from backbone '{name}').{close_names(arch, timm.list_models())} "
            "timm.list_models('vit_*') lists the ViTs."
        )
    if tag and spec not in timm.list_pretrained(f"{arch}.*"):
        raise VlpromptError(
            f"timm has no pretrained tag '{tag}' for '{arch}'."
            f"{close_names(spec, timm.list_pretrained(f'{arch}.*'))} Known tags: "
            f"{', '.join(timm.list_pretrained(f'{arch}.*')) or '(none)'}."
        )
    kind = kwargs.pop("kind", "mae" if "mae" in tag else "vit")
    kwargs.setdefault("num_classes", 0)
    if not pretrained and weights is None:
        model = timm.create_model(spec, pretrained=False, **kwargs)
        return wrap_timm_vit(model.eval(), backbone_id=f"{name}#random", kind=kind)
    if weights is None:
        weights = _find_timm_weights(spec)
    if weights is not None:
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise VlpromptError(
                f"Backbone '{name}': weights file '{weights}' does not exist; pass an existing file."
            )
        model = _load_timm_file(spec, name, weights, kwargs)
    else:
        if not hub_reachable():
            raise missing_weights(
                name,
                "a local file with weights=PATH (.safetensors / .pth / .npz)",
                "pretrained=false or random_init=true",
            )
        try:
            model = timm.create_model(spec, pretrained=True, **kwargs)
        except (OSError, RuntimeError) as error:
            raise missing_weights(
                name,
                "a local file with weights=PATH (.safetensors / .pth / .npz)",
                "pretrained=false or random_init=true",
            ) from error
    return wrap_timm_vit(model.eval(), backbone_id=name, kind=kind)


def _load_timm_file(spec: str, name: str, weights: str, kwargs: dict) -> Any:
    """Build the architecture, then load the file through timm (its checkpoint filter resizes position
    embeddings and converts layouts) and refuse any file that leaves a non-classifier weight unloaded: timm
    itself loads non-strictly whenever the classifier size differs, which would silently keep random weights."""
    import timm
    from timm.models import load_pretrained
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = timm.create_model(spec, pretrained=False, **kwargs)
    classifier = model.pretrained_cfg.get("classifier", "head")
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    report: dict[str, list[str]] = {}

    def record(module: Any, incompatible: Any) -> None:
        report["missing"] = list(incompatible.missing_keys)
        report["unexpected"] = list(incompatible.unexpected_keys)

    handle = model.register_load_state_dict_post_hook(record)
    try:
        load_pretrained(
            model,
            pretrained_cfg={**model.pretrained_cfg, "file": weights, "custom_load": weights.endswith(".npz")},
            num_classes=model.num_classes,
            filter_fn=checkpoint_filter_fn,
            strict=False,
        )
    except (RuntimeError, KeyError, ValueError, AssertionError) as error:
        raise wrong_checkpoint(name, weights, error) from error
    finally:
        handle.remove()
    missing = [k for k in report.get("missing", []) if not k.startswith(classifiers)]
    unexpected = [k for k in report.get("unexpected", []) if not k.startswith(classifiers)]
    if missing or unexpected:
        detail = (f"missing {', '.join(missing[:6])}" if missing else "") + (
            f"{'; ' if missing else ''}unexpected {', '.join(unexpected[:6])}" if unexpected else ""
        )
        raise wrong_checkpoint(name, weights, RuntimeError(detail))
    return model


def _find_timm_weights(spec: str) -> str | None:
    """The checkpoint of a timm pretrained tag in the local HF or torch-hub cache."""
    import timm
    import torch

    config = timm.models.get_pretrained_cfg(spec)
    if config is None:
        return None
    if config.hf_hub_id:
        names = (
            [config.hf_hub_filename] if config.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        )
        found = cached_hf_file(config.hf_hub_id, names)
        if found:
            return found
    if config.url:
        return cached_url_file(config.url, os.path.join(torch.hub.get_dir(), "checkpoints"))
    return None
