"""Adapter over open_clip models: the ViT image tower and both text-tower layouts.

Layouts: ``open_clip.CLIP`` keeps the text parts on the model itself (token_embedding, positional_embedding,
transformer, ln_final, text_projection, attn_mask, text_pool_type); ``open_clip.CustomTextCLIP`` keeps them in
``model.text``, a ``TextTransformer`` that may also append a class token (``cls_emb``, CoCa style) or use a
padding mask. The adapter mirrors open_clip's own forward step by step so that with no prompts it returns the
library's features; it owns no weights, only references to the model's modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
from vlprompt.backbones.causal_text import (
    CausalTextTower,
    DeepPrompts,
    attend_with_prefix,
    causal_mask,
    insert_deep_prompt,
    pack_rows,
    unpack_rows,
)
from vlprompt.backbones.timm_vit import pool_tokens
from vlprompt.core.errors import VlpromptError

Tokenizer = Callable[..., torch.Tensor]


def _fused_attention(block: nn.Module, tower: str, index: int) -> AttentionProjections:
    """open_clip's residual blocks keep q, k, v fused in one ``nn.MultiheadAttention`` called ``attn``."""
    if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
        raise VlpromptError(
            f"Block {index} of this open_clip {tower} tower has no nn.MultiheadAttention 'attn' (a custom block "
            "type); LoRA cannot attach to it. Use a standard open_clip ViT / text transformer."
        )
    return AttentionProjections(owner=block, fused="attn")


def _run_block(
    block: nn.Module, tokens: torch.Tensor, batch_first: bool, attn_mask: torch.Tensor | None = None
):
    """One open_clip residual block on batch-first tokens, whatever layout the transformer was built with."""
    if batch_first:
        return block(tokens, attn_mask=attn_mask)
    return block(tokens.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


class OpenClipVisionTower(VisionTower):
    """open_clip ``VisionTransformer``: conv1 patchify, class token, position embedding, ln_pre, blocks, pool."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        from open_clip.transformer import VisionTransformer

        if not isinstance(visual, VisionTransformer):
            raise VlpromptError(
                f"This open_clip model's image tower is a {type(visual).__name__}, not a VisionTransformer or a "
                "timm ViT / EVA (TimmModel); prompt methods need a ViT token pipeline. Pick a 'ViT-*', 'EVA*' or "
                "'*SigLIP*' open_clip architecture."
            )
        if visual.attn_pool is not None:
            raise VlpromptError(
                "This open_clip image tower pools with an attentional pooler (CoCa style), which has no per-token "
                "readout for prompts. Pick a CLIP architecture without 'attentional_pool'."
            )
        if visual.pool_type not in ("tok", "avg"):
            raise VlpromptError(
                f"This open_clip image tower uses pool_type={visual.pool_type!r}; vlprompt supports 'tok' and 'avg'."
            )
        self.visual = visual
        self.pooling = "cls" if visual.pool_type == "tok" else "mean"
        self.width = int(visual.conv1.out_channels)
        self.num_blocks = len(visual.transformer.resblocks)
        self.num_prefix_tokens = 1
        self.patch_size = int(visual.conv1.kernel_size[0])
        self.feature_dim = int(visual.proj.shape[1]) if visual.proj is not None else self.width
        self._batch_first = bool(getattr(visual.transformer, "batch_first", False))

    def pre_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_pre(tokens)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        patches = visual.conv1(images).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(patches.dtype).view(1, 1, -1).expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls, patches], dim=1) + visual.positional_embedding.to(patches.dtype)
        tokens = visual.patch_dropout(tokens)
        return visual.ln_pre(tokens)

    def block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        return _run_block(self.visual.transformer.resblocks[index], tokens, self._batch_first)

    def block_modules(self) -> Sequence[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def attention_projections(self, index: int) -> AttentionProjections:
        return _fused_attention(self.visual.transformer.resblocks[index], "image", index)

    def block_sites(self, index: int) -> BlockSites:
        """open_clip's ``ResidualAttentionBlock``: ln_1 -> attn -> ln_2 -> mlp (c_fc, c_proj).

        q, k, v are fused inside ``nn.MultiheadAttention``, which reads ``in_proj_weight`` and ``out_proj``'s
        tensors directly instead of calling them, so there is no ``attn_qkv`` and no ``attn_out`` place (a wrapper
        there would be silently skipped); ``attn`` is the whole attention module, whose output ends with out_proj."""
        from open_clip.transformer import ResidualAttentionBlock

        block = self.visual.transformer.resblocks[index]
        if type(block) is not ResidualAttentionBlock or not isinstance(block.attn, nn.MultiheadAttention):
            raise VlpromptError(
                f"Block {index} of this open_clip image tower is a {type(block).__name__} without a standard "
                "nn.MultiheadAttention; parameter-efficient modules attach to open_clip's ResidualAttentionBlock only."
            )
        places: dict[str, tuple[nn.Module, str]] = {
            "norm_attn": (block, "ln_1"), "attn": (block, "attn"), "norm_mlp": (block, "ln_2"), "mlp": (block, "mlp"),
        }
        names = dict(block.mlp.named_children())
        if isinstance(names.get("c_fc"), nn.Linear) and isinstance(names.get("c_proj"), nn.Linear):
            places["mlp_in"] = (block.mlp, "c_fc")
            places["mlp_out"] = (block.mlp, "c_proj")
        return BlockSites(places)

    def tower_sites(self) -> BlockSites:
        visual = self.visual
        return BlockSites(
            {"patch_proj": (visual, "conv1"), "class_token": (visual, "class_embedding"), "norm_final": (visual, "ln_post")},
            known=TOWER_SITES,
        )

    def finalize(
        self, tokens: torch.Tensor, num_prompts: int = 0, pool_prompts: bool = False
    ) -> torch.Tensor:
        visual = self.visual
        if visual.final_ln_after_pool:
            pooled = visual.ln_post(pool_tokens(tokens, self.pooling, 1, num_prompts, pool_prompts))
        else:
            pooled = pool_tokens(visual.ln_post(tokens), self.pooling, 1, num_prompts, pool_prompts)
        return pooled @ visual.proj if visual.proj is not None else pooled


def text_start(tokenizer: Tokenizer, context_length: int) -> int:
    """How many special tokens the tokenizer puts before the text: the first slot where "" and "a" differ.

    CLIP's BPE gives [SOS, EOT] / [SOS, a, EOT] (1); SigLIP's T5 SentencePiece [EOS, pad] / [a, EOS] (0); a
    Gemma-style tokenizer [BOS, pad] / [BOS, a, pad] (1).
    """
    ids = tokenizer(["", "a"], context_length=context_length)
    differ = (ids[0] != ids[1]).nonzero()
    return int(differ[0, 0]) if len(differ) else 0


class OpenClipTextTower(CausalTextTower):
    """open_clip text tower for both layouts; references the model's own modules and parameters."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        super().__init__()
        from open_clip.transformer import ResidualAttentionBlock, TextTransformer

        if hasattr(model, "token_embedding"):  # CLIP layout
            source: Any = model
            pool_type = model.text_pool_type
            eos_id = getattr(model, "text_eos_id", None)
            cls_emb, use_pad_mask, correct_cls_mask, pad_id = None, False, False, 0
        elif isinstance(getattr(model, "text", None), TextTransformer):  # CustomTextCLIP layout
            source = model.text
            pool_type = source.pool_type
            eos_id = getattr(source, "eos_id", None)
            cls_emb = source.cls_emb
            use_pad_mask = bool(getattr(source, "use_pad_mask", False))
            correct_cls_mask = bool(getattr(source, "correct_cls_mask", False))
            pad_id = int(getattr(source, "pad_id", 0))
        else:
            text = getattr(model, "text", None)
            raise VlpromptError(
                f"This open_clip model's text tower is a {type(text).__name__}, not open_clip's TextTransformer "
                "(Hugging Face text towers inside CustomTextCLIP are not supported by text-prompt methods). "
                "Pick an open_clip architecture with a native text transformer, or use only visual methods."
            )
        if pool_type not in ("argmax", "eos", "first", "last"):
            raise VlpromptError(
                f"This open_clip text tower pools with {pool_type!r}; text-prompt methods need a pooled token "
                "('argmax', 'eos', 'first' or 'last')."
            )
        self.token_embedding = source.token_embedding
        self.positional_embedding = source.positional_embedding
        self.transformer = source.transformer
        self.ln_final = source.ln_final
        self.text_projection = source.text_projection
        self.cls_emb = cls_emb
        self.register_buffer("attn_mask", source.attn_mask, persistent=False)
        self.tokenizer = tokenizer
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.use_pad_mask = use_pad_mask
        self.correct_cls_mask = correct_cls_mask
        self.width = int(self.token_embedding.embedding_dim)
        self.context_length = int(self.positional_embedding.shape[0]) - (1 if cls_emb is not None else 0)
        self.heads = int(getattr(source, "heads", self.transformer.resblocks[0].attn.num_heads))
        if self.text_projection is None:
            self.feature_dim = self.width
        elif isinstance(self.text_projection, nn.Linear):
            self.feature_dim = int(self.text_projection.out_features)
        else:
            self.feature_dim = int(self.text_projection.shape[1])
        self._batch_first = bool(getattr(self.transformer, "batch_first", False))
        # declared shape (TextTower): SigLIP's tower has no causal mask and pools the last slot
        self.causal = source.attn_mask is not None
        self.pooling = {"eos": "eot", "argmax": "argmax", "first": "first", "last": "last"}[pool_type]
        self.start_tokens = text_start(tokenizer, self.context_length)
        # the fast paths are exact only for a causal, unpadded encoder pooled at a token position
        self.fast_paths_exact = self.causal and cls_emb is None and not use_pad_mask
        self._kv_blocks = all(
            isinstance(b, ResidualAttentionBlock)
            and not hasattr(b, "ln_1_kv")
            and b.attn._qkv_same_embed_dim
            and b.attn.bias_k is None
            and not b.attn.add_zero_attn
            for b in self.transformer.resblocks
        )

    # ----- TextTower seams -----
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts), context_length=self.context_length)

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(token_ids)

    def eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The position open_clip pools at; with an appended class token, its index (after the ids)."""
        n, length = token_ids.shape
        if self.cls_emb is not None:
            return torch.full((n,), length, dtype=torch.long, device=token_ids.device)
        if self.pool_type == "argmax":
            return token_ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (token_ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "first":
            return torch.zeros(n, dtype=torch.long, device=token_ids.device)
        return torch.full((n,), length - 1, dtype=torch.long, device=token_ids.device)

    def attention_projections(self, index: int) -> AttentionProjections:
        # the shared-prefix path reads the fused weights directly; with a wrapped attention it must not be used
        self._kv_blocks = False
        return _fused_attention(self.transformer.resblocks[index], "text", index)

    # ----- CausalTextTower pieces -----
    @property
    def num_layers(self) -> int:
        return len(self.transformer.resblocks)

    def attention_heads(self) -> int:
        return self.heads

    def _cast_dtype(self) -> torch.dtype:
        return self.transformer.get_cast_dtype()

    def add_positions(self, embeddings: torch.Tensor, start: int = 0) -> torch.Tensor:
        dtype = self._cast_dtype()
        positions = self.positional_embedding[start : start + embeddings.shape[1]]
        return embeddings.to(dtype) + positions.to(dtype)

    def run_layer(self, index: int, hidden: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        return _run_block(self.transformer.resblocks[index], hidden, self._batch_first, attn_mask)

    def run_layer_after_prefix(
        self, index: int, hidden: Sequence[torch.Tensor], prefix_hidden: torch.Tensor
    ) -> list[torch.Tensor]:
        block = self.transformer.resblocks[index]
        if not self._kv_blocks:  # custom blocks: same result by running the concatenated sequences
            groups, prefix_length = prefix_hidden.shape[0], prefix_hidden.shape[1]
            outputs = []
            for rows in hidden:
                prefixes = prefix_hidden.unsqueeze(1).expand(groups, rows.shape[0] // groups, -1, -1).flatten(0, 1)
                full = torch.cat([prefixes, rows], dim=1)
                mask = causal_mask(full.shape[1], full.device, full.dtype)
                outputs.append(self.run_layer(index, full, mask)[:, prefix_length:])
            return outputs
        attn = block.attn
        weight, bias = attn.in_proj_weight, attn.in_proj_bias
        width = prefix_hidden.shape[-1]
        tokens = pack_rows(hidden)  # every group's tokens through each weight at once
        qkv = unpack_rows(nn.functional.linear(block.ln_1(tokens), weight, bias), hidden)
        prefix_bias = bias[width:] if bias is not None else None
        prefix_key, prefix_value = nn.functional.linear(
            block.ln_1(prefix_hidden), weight[width:], prefix_bias
        ).split(width, dim=-1)
        dropout = attn.dropout if self.training else 0.0
        out = pack_rows(
            [
                attend_with_prefix(*rows.split(width, dim=-1), prefix_key, prefix_value, attn.num_heads, dropout=dropout)
                for rows in qkv
            ]
        )
        tokens = tokens + block.ls_1(attn.out_proj(out))
        return unpack_rows(tokens + block.ls_2(block.mlp(block.ln_2(tokens))), hidden)

    def pool_project(self, pooled_hidden: torch.Tensor) -> torch.Tensor:
        pooled = self.ln_final(pooled_hidden)
        if self.text_projection is None:
            return pooled
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection

    def _padding_mask(self, token_ids: torch.Tensor, seq_len: int, dtype: torch.dtype) -> torch.Tensor:
        """open_clip's additive key mask over padding (and the class token), one copy per head."""
        valid = token_ids != self.pad_id
        if self.cls_emb is not None:
            ones = valid.new_ones(valid.shape[0], 1)
            valid = torch.cat([valid, ones] if self.correct_cls_mask else [ones, valid], dim=1)
        key_mask = valid.unsqueeze(1).expand(-1, seq_len, -1)
        additive = torch.zeros(key_mask.shape, dtype=dtype, device=token_ids.device)
        additive.masked_fill_(~key_mask, float("-inf"))
        return additive.repeat_interleave(self.heads, 0)

    def encode_full(
        self, embeddings: torch.Tensor, token_ids: torch.Tensor, deep: DeepPrompts | None = None
    ) -> torch.Tensor:
        hidden = embeddings.to(self._cast_dtype())
        n, seq_len = hidden.shape[0], hidden.shape[1]
        if self.cls_emb is not None:
            hidden = torch.cat(
                [hidden, self.cls_emb.to(hidden.dtype).view(1, 1, -1).expand(n, -1, -1)], dim=1
            )
            seq_len += 1
        mask = self.attn_mask[:seq_len, :seq_len] if self.attn_mask is not None else None
        if self.use_pad_mask or self.cls_emb is not None:
            padding = self._padding_mask(token_ids, seq_len, hidden.dtype)
            mask = padding if mask is None else mask.unsqueeze(0) + padding
        hidden = hidden + self.positional_embedding[:seq_len].to(hidden.dtype)
        for index in range(self.num_layers):
            hidden = self.run_layer(index, insert_deep_prompt(index, hidden, deep, self.start_tokens), mask)
        rows = torch.arange(n, device=hidden.device)
        return self.pool_project(hidden[rows, self.eot_positions(token_ids).to(hidden.device)])


def open_clip_preprocess(model: nn.Module) -> PreprocessConfig:
    """Image preparation from the preprocess config open_clip attaches to the model (or CLIP's defaults)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    visual = model.visual
    config = dict(getattr(visual, "preprocess_cfg", None) or {})
    size = config.get("size", visual.image_size)
    size = size[-1] if isinstance(size, (tuple, list)) else size
    return PreprocessConfig(
        image_size=int(size),
        mean=tuple(float(v) for v in config.get("mean", OPENAI_DATASET_MEAN)),
        std=tuple(float(v) for v in config.get("std", OPENAI_DATASET_STD)),
        interpolation=str(config.get("interpolation", "bicubic")),
        crop_pct=1.0,
    )


def wrap_open_clip(
    model: nn.Module, tokenizer: Tokenizer, preprocess: PreprocessConfig, backbone_id: str
) -> Backbone:
    """An open_clip CLIP / CustomTextCLIP as a Backbone (kind "clip"), with its tokenizer and preprocessing."""
    from open_clip.timm_model import TimmModel

    from vlprompt.backbones.open_clip_timm import open_clip_timm_tower

    text = OpenClipTextTower(model, tokenizer)
    if isinstance(model.visual, TimmModel):  # EVA-CLIP, SigLIP, SigLIP 2: a timm trunk inside open_clip
        visual: VisionTower = open_clip_timm_tower(model.visual, text.feature_dim)
    else:
        visual = OpenClipVisionTower(model.visual)
    bias = getattr(model, "logit_bias", None)
    return Backbone(
        backbone_id=backbone_id,
        visual=visual,
        text=text,
        preprocess=preprocess,
        logit_scale=float(model.logit_scale.exp().item()),
        logit_bias=float(bias.item()) if bias is not None else 0.0,
        kind="clip",
        extra={"model": model},  # the library model the towers reference (its own encode_* for checks)
    )
