"""Adapter over transformers' ``CLIPModel``: vision and text towers built from the model's own submodules.

Mirrors ``get_image_features`` (embeddings without position interpolation, pre_layrnorm, encoder layers,
post_layernorm on the class token, visual_projection) and ``get_text_features`` (embeddings, causal encoder,
final_layer_norm, EOS pooling, text_projection). EOS pooling follows transformers: configs with the legacy
``eos_token_id == 2`` pool at the largest token id, newer ones at the first occurrence of ``eos_token_id``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vlprompt.backbones.base import AttentionProjections, Backbone, PreprocessConfig, VisionTower
from vlprompt.backbones.causal_text import CausalTextTower, attend_with_prefix, pack_rows, unpack_rows
from vlprompt.backbones.hub import hub_reachable
from vlprompt.backbones.loading import as_bool, missing_weights, wrong_checkpoint
from vlprompt.core.errors import VlpromptError, missing_extra

log = logging.getLogger(__name__)

_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


_SEPARATE = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}


def require_transformers(feature: str) -> None:
    """transformers is the optional ``[hf]`` extra: say so, naming ``feature``, when it is not installed."""
    try:
        import transformers  # noqa: F401
    except ImportError as error:
        raise missing_extra("transformers", "hf", feature) from error


def _layer_output(output: Any) -> torch.Tensor:
    """Encoder layers return a tensor in transformers 5 and a tuple in 4.x."""
    return output[0] if isinstance(output, tuple) else output


class HFClipVisionTower(VisionTower):
    """``CLIPModel.vision_model`` + ``visual_projection``; CLS pooling."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection
        config = model.config.vision_config
        self.pooling = "cls"
        self.width = int(config.hidden_size)
        self.num_blocks = len(self.vision_model.encoder.layers)
        self.num_prefix_tokens = 1
        self.patch_size = int(config.patch_size)
        self.feature_dim = int(self.visual_projection.out_features)

    def pre_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.vision_model.pre_layrnorm(tokens)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.vision_model.embeddings(images, interpolate_pos_encoding=False)
        return self.vision_model.pre_layrnorm(tokens)

    def block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        return _layer_output(self.vision_model.encoder.layers[index](tokens, None))

    def block_modules(self) -> Sequence[nn.Module]:
        return list(self.vision_model.encoder.layers)

    def attention_projections(self, index: int) -> AttentionProjections:
        return AttentionProjections(owner=self.vision_model.encoder.layers[index].self_attn, separate=dict(_SEPARATE))

    def finalize(
        self, tokens: torch.Tensor, num_prompts: int = 0, pool_prompts: bool = False
    ) -> torch.Tensor:
        return self.visual_projection(self.vision_model.post_layernorm(tokens[:, 0]))


class HFClipTextTower(CausalTextTower):
    """``CLIPModel.text_model`` + ``text_projection``; causal, pooled at the EOS token."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection
        self.tokenizer = tokenizer
        config = model.config.text_config
        self.eos_token_id = int(config.eos_token_id if config.eos_token_id is not None else 2)
        self.width = int(config.hidden_size)
        self.context_length = int(config.max_position_embeddings)
        self.feature_dim = int(self.text_projection.out_features)
        self.num_heads = int(config.num_attention_heads)

    # ----- TextTower seams -----
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        encoded = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.context_length,
            truncation=True,
            return_tensors="pt",
        )
        return encoded["input_ids"]

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model.embeddings.token_embedding(token_ids)

    def eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.eos_token_id == 2:  # legacy configs: transformers pools at the largest id
            return token_ids.argmax(dim=-1)
        return (token_ids == self.eos_token_id).int().argmax(dim=-1)

    def attention_projections(self, index: int) -> AttentionProjections:
        return AttentionProjections(owner=self.text_model.encoder.layers[index].self_attn, separate=dict(_SEPARATE))

    # ----- CausalTextTower pieces -----
    @property
    def num_layers(self) -> int:
        return len(self.text_model.encoder.layers)

    def attention_heads(self) -> int:
        return self.num_heads

    def add_positions(self, embeddings: torch.Tensor, start: int = 0) -> torch.Tensor:
        positions = self.text_model.embeddings.position_embedding.weight[start : start + embeddings.shape[1]]
        return embeddings + positions

    def run_layer(self, index: int, hidden: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        layer = self.text_model.encoder.layers[index]
        return _layer_output(layer(hidden, attn_mask.to(hidden.dtype)[None, None]))

    def run_layer_after_prefix(
        self, index: int, hidden: Sequence[torch.Tensor], prefix_hidden: torch.Tensor
    ) -> list[torch.Tensor]:
        layer = self.text_model.encoder.layers[index]
        attn = layer.self_attn
        tokens = pack_rows(hidden)  # every group's tokens through each weight at once
        normed, prefix_normed = layer.layer_norm1(tokens), layer.layer_norm1(prefix_hidden)
        prefix_key, prefix_value = attn.k_proj(prefix_normed), attn.v_proj(prefix_normed)
        dropout = attn.dropout if self.training else 0.0
        out = pack_rows(
            [
                attend_with_prefix(
                    q, k, v, prefix_key, prefix_value, attn.num_heads, scale=attn.scale, dropout=dropout
                )
                for q, k, v in zip(
                    *(unpack_rows(proj(normed), hidden) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
                )
            ]
        )
        tokens = tokens + attn.out_proj(out)
        return unpack_rows(tokens + layer.mlp(layer.layer_norm2(tokens)), hidden)

    def pool_project(self, pooled_hidden: torch.Tensor) -> torch.Tensor:
        return self.text_projection(self.text_model.final_layer_norm(pooled_hidden))


def hf_clip_preprocess(model: nn.Module, image_processor: Any = None) -> PreprocessConfig:
    """Image preparation from a CLIPImageProcessor when one is given, else CLIP's published defaults."""
    image_size = int(model.config.vision_config.image_size)
    if image_processor is None:
        return PreprocessConfig(image_size=image_size, mean=_OPENAI_MEAN, std=_OPENAI_STD)
    crop = getattr(image_processor, "crop_size", None) or {}
    size = getattr(image_processor, "size", None) or {}
    crop_size = int(crop.get("height", image_size)) if isinstance(crop, dict) else int(crop)
    resize = int(size.get("shortest_edge", crop_size)) if isinstance(size, dict) else int(size)
    resample = getattr(image_processor, "resample", 3)
    resample = _RESAMPLE_NAMES.get(int(getattr(resample, "value", resample)), "bicubic")
    return PreprocessConfig(
        image_size=crop_size,
        mean=tuple(float(v) for v in (image_processor.image_mean or _OPENAI_MEAN)),
        std=tuple(float(v) for v in (image_processor.image_std or _OPENAI_STD)),
        interpolation=resample,
        crop_pct=crop_size / resize if resize else 1.0,
    )


def wrap_hf_clip(model: nn.Module, tokenizer: Any, backbone_id: str, image_processor: Any = None) -> Backbone:
    """A transformers ``CLIPModel`` as a Backbone (kind "clip"); the tokenizer pads to max_length."""
    require_transformers(f"Backbone '{backbone_id}'")
    from transformers import CLIPModel

    if not isinstance(model, CLIPModel):
        raise VlpromptError(
            f"Backbone '{backbone_id}' loaded as a transformers {type(model).__name__}, not a CLIPModel. "
            "Point 'hf:' at a CLIP checkpoint (config model_type 'clip')."
        )
    return Backbone(
        backbone_id=backbone_id,
        visual=HFClipVisionTower(model),
        text=HFClipTextTower(model, tokenizer),
        preprocess=hf_clip_preprocess(model, image_processor),
        logit_scale=float(model.logit_scale.exp().item()),
        kind="clip",
        extra={"model": model},  # the library model the towers reference (its own get_*_features for checks)
    )


# ----- loading by name (hf:<repo-or-path>) -----
def create_hf(spec: str, name: str, **kwargs: Any) -> Backbone:
    """``hf:<repo-or-path>``: a transformers CLIPModel from a local folder, the HF cache, or the hub when reachable."""
    require_transformers(f"Backbone '{name}'")
    from transformers import AutoConfig, AutoTokenizer, CLIPImageProcessor, CLIPModel

    random_init = as_bool(kwargs.pop("random_init", False), "random_init")
    local_only = os.path.isdir(spec) or not hub_reachable()
    how_local = "a local folder saved with save_pretrained: 'hf:/path/to/folder'"
    try:
        config = AutoConfig.from_pretrained(spec, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=local_only)
    except OSError as error:
        raise missing_weights(name, how_local, "random_init=true with a local config folder") from error
    if getattr(config, "model_type", None) != "clip":
        raise VlpromptError(
            f"Backbone '{name}' is a transformers '{getattr(config, 'model_type', '?')}' model; 'hf:' loads CLIP "
            "models (model_type 'clip')."
        )
    try:
        if random_init:
            model = CLIPModel(config)
        else:
            model = CLIPModel.from_pretrained(spec, local_files_only=local_only, **kwargs)
    except OSError as error:
        raise missing_weights(name, how_local, "random_init=true") from error
    except (RuntimeError, ValueError) as error:
        raise wrong_checkpoint(name, spec, error) from error
    try:
        image_processor = CLIPImageProcessor.from_pretrained(spec, local_files_only=local_only)
    except OSError:
        log.info("No image processor config for %s; using CLIP's default preprocessing", name)
        image_processor = None
    return wrap_hf_clip(model.eval(), tokenizer, name, image_processor=image_processor)
