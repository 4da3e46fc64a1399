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

from vlprompt.backbones.base import (
    TOWER_SITES,
    AttentionProjections,
    Backbone,
    BlockSites,
    PreprocessConfig,
    VisionTower,
)
from vlprompt.backbones.hub import cached_hf_file, cached_url_file, hub_reachable
from vlprompt.backbones.loading import as_bool, close_names, missing_weights, wrong_checkpoint
from vlprompt.backbones.prompt_support import InputStem, PromptSupport
from vlprompt.backbones.timm_readout import adopt_timm_model, map_pool
from vlprompt.core.errors import VlpromptError


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
    """A timm ViT (cls / register tokens, with or without class-token position embedding, CLS / mean / MAP readout).

    ``keep_head`` keeps timm's head after pooling: inside open_clip (``TimmModel``) it is CLIP's image projection.
    """

    def __init__(self, model: nn.Module, pooling: str | None = None, keep_head: bool = False) -> None:
        super().__init__()
        if getattr(model, "dist_token", None) is not None:
            raise VlpromptError(
                "This timm ViT is a distilled DeiT (class + distillation token, averaged heads); vlprompt reads out "
                "one class token. Use the non-distilled variant (e.g. 'deit_base_patch16_224')."
            )
        adopt_timm_model(self, model, pooling, keep_head)

    def pre_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.norm_pre(tokens)

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

    def attention_projections(self, index: int) -> AttentionProjections:
        """Block ``index``'s packed ``qkv`` and ``proj`` (the places ``block_sites`` names), for CLIP-LoRA."""
        sites = self.block_sites(index)
        if not (sites.has("attn_qkv") and sites.has("attn_out")):
            raise VlpromptError(
                f"Block {index} of this timm ViT has no packed qkv attention (timm's Attention), so its attention "
                "projections cannot take LoRA."
            )
        owner, packed = sites.places["attn_qkv"]  # timm's Attention holds both: (attn, "qkv"), (attn, "proj")
        return AttentionProjections(owner=owner, packed=packed, separate={"o": sites.places["attn_out"][1]})

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
        if self.pooling == "map":
            pooled = map_pool(
                self.model.attn_pool, tokens, self.num_prefix_tokens, num_prompts, pool_prompts,
                self._pool_include_prefix,
            )
        else:
            pooled = pool_tokens(
                tokens, self.pooling, self.num_prefix_tokens, num_prompts, pool_prompts, self._pool_include_prefix
            )
        pooled = self.model.fc_norm(pooled)
        return self.model.head(self.model.head_drop(pooled)) if self.keep_head else pooled

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        embed = self.model.patch_embed
        return embed.norm(embed.proj(pixels).flatten(2).transpose(1, 2))

    def mean_readout(self, tokens: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
        return self.model.fc_norm(self.model.norm(tokens)[:, start:stop].mean(dim=1))

    def embed_any_size(self, images: torch.Tensor) -> torch.Tensor:
        """As ``embed``, with the position embeddings' patch grid resampled to the images' grid the way the
        official VPT loads them for a larger model (scipy ``ndimage.zoom`` order 1: bilinear, corners aligned)."""
        model = self.model
        embed = model.patch_embed
        features = embed.proj(images)
        grid = tuple(features.shape[-2:])
        tokens = embed.norm(features.flatten(2).transpose(1, 2))
        pos = model.pos_embed
        if pos is not None and grid != tuple(embed.grid_size):
            prefix = 0 if model.no_embed_class else model.num_prefix_tokens
            old = embed.grid_size
            table = pos[:, prefix:].reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
            table = nn.functional.interpolate(table, size=grid, mode="bilinear", align_corners=True)
            pos = torch.cat([pos[:, :prefix], table.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)
        prefix_tokens = [t.expand(tokens.shape[0], -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
        if pos is not None and model.no_embed_class:
            tokens = tokens + pos
        tokens = torch.cat([*prefix_tokens, tokens], dim=1)
        if pos is not None and not model.no_embed_class:
            tokens = tokens + pos
        return model.norm_pre(model.patch_drop(model.pos_drop(tokens)))

    def input_stem(self) -> InputStem:
        return InputStem(conv=self.model.patch_embed.proj, norm=None, style="vit")

    def embed_after_stem(self, features: torch.Tensor) -> torch.Tensor:
        model = self.model
        tokens = model.patch_embed.norm(features.flatten(2).transpose(1, 2))
        return model.norm_pre(model.patch_drop(model._pos_embed(tokens)))

    def prompt_support(self) -> PromptSupport:
        """Token prompts and VPT's readouts, plus the pixel locations through the patch-embedding seams."""
        base = super().prompt_support()
        refusals: dict[str, str] = {}
        return PromptSupport(
            kind="sequence",
            block_widths=base.block_widths,
            locations=(*base.locations, "prepend-pixel", "below", "pad"),
            deep_locations=base.deep_locations,
            readouts=("original", "img_pool", "prompt_pool", "imgprompt_pool"),
            refusals=refusals,
        )


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
    """A timm ``VisionTransformer`` or ``Eva`` as a Backbone. ``kind="mae"`` reads out the mean of the patch tokens."""
    if kind not in ("vit", "mae"):
        raise VlpromptError(f"wrap_timm_vit: kind must be 'vit' or 'mae', got {kind!r}.")
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    from vlprompt.backbones.timm_eva import EvaVisionTower

    towers = {VisionTransformer: TimmVisionTower, Eva: EvaVisionTower}
    tower_class = next((t for cls, t in towers.items() if isinstance(model, cls)), None)
    if tower_class is None:
        raise VlpromptError(
            f"Backbone '{backbone_id}' is a timm {type(model).__name__}, not a VisionTransformer or Eva; prompt "
            "methods need a ViT token pipeline. Pick a 'vit_*' / 'deit*' / 'eva02_*' architecture."
        )
    tower = tower_class(model, pooling="mean" if kind == "mae" else None)
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
    reachable; ``pretrained=False`` or ``random_init=True`` for random init. ViTs, Swin, ResNet and ConvNeXt
    models each get their adapter (timm_models.py). ``checkpoint_format=mae|moco_v3`` (or detected) reads the
    official self-supervised files (ssl_checkpoints.py); MAE defaults to its mean readout (global_pool='avg')."""
    import timm

    from vlprompt.backbones.timm_models import wrap_timm_model

    weights = kwargs.pop("weights", None)
    checkpoint_format = kwargs.pop("checkpoint_format", None)
    if checkpoint_format is not None and weights is None:
        raise VlpromptError(
            f"Backbone '{name}': checkpoint_format={checkpoint_format} describes a weights file; pass weights=PATH."
        )
    if checkpoint_format == "mae":
        kwargs.setdefault("kind", "mae")
        kwargs.setdefault("global_pool", "avg")
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
        return wrap_timm_model(model.eval(), backbone_id=f"{name}#random", kind=kind)
    if weights is None:
        weights = _find_timm_weights(spec)
    if weights is not None:
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise VlpromptError(
                f"Backbone '{name}': weights file '{weights}' does not exist; pass an existing file."
            )
        model = _load_timm_file(spec, name, weights, kwargs, checkpoint_format)
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
    return wrap_timm_model(model.eval(), backbone_id=name, kind=kind)


def _load_timm_file(
    spec: str, name: str, weights: str, kwargs: dict, checkpoint_format: str | None = None
) -> Any:
    """Build the architecture, then load the file through timm (its checkpoint filter resizes position
    embeddings and converts layouts) and refuse any file that leaves a non-classifier weight unloaded: timm
    itself loads non-strictly whenever the classifier size differs, which would silently keep random weights."""
    import timm
    from timm.models import load_pretrained

    from vlprompt.backbones.ssl_checkpoints import load_ssl_checkpoint
    from vlprompt.backbones.timm_models import timm_family

    model = timm.create_model(spec, pretrained=False, **kwargs)
    _, checkpoint_filter_fn = timm_family(model, name)
    if load_ssl_checkpoint(model, name, weights, checkpoint_format, checkpoint_filter_fn):
        return model
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
