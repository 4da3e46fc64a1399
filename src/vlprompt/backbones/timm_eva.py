"""Adapter over timm's ``Eva`` (EVA-02, EVA-CLIP image towers): rotary position embedding and SwiGLU blocks.

The token pipeline is timm's ``forward_features`` + ``forward_head`` split at the same seams as the plain ViT
(``patch_embed`` -> ``_pos_embed`` -> ``norm_pre`` -> blocks -> ``norm`` -> pool -> ``fc_norm`` [-> head]).

Rotary position embedding (rope) and prompt tokens. timm's ``EvaAttention`` rotates q and k of every token after the
first ``num_prefix_tokens`` (``q[:, :, npt:]``) by the rope table of the patch grid, which has exactly one row per
patch; the prefix (class / register) tokens are left unrotated. A sequence with extra tokens after the prefix does
not fit that table: timm's own block fails with a shape mismatch (it has no notion of tokens beyond the grid). This
adapter therefore hands each block a table with identity rows (sin 0, cos 1) in front of the patch rows, one per
prompt token, so prompts are treated exactly as timm treats the class token: no rotation, no position. With no
prompts the table is timm's own, so the features equal the library's. Prompts also get no absolute position
embedding (VPT's rule), so a prompt carries no position at all. Other code: the EVA-02 / EVA-CLIP reference
attention (baaivision/EVA) rotates the tokens after the class token with a table of the grid's size, so it has no
place for prompts either; the EVA-02 prompt-tuning code we read (an mmpretrain ``ViTEVA02`` prompted backbone)
rotates only the last H·W (patch) tokens and leaves the class token and every prompt unrotated: the same rule as
ours. We found no EVA prompt paper that gives prompts rope positions.

The SwiGLU MLP (``fc1_g``, ``fc1_x``, a scale norm, ``fc2``) acts per token, so prompts pass through it unchanged
in meaning; it has no single input projection, so the ``mlp_in`` block place is absent on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vlprompt.backbones.base import TOWER_SITES, AttentionProjections, BlockSites, VisionTower
from vlprompt.backbones.timm_readout import adopt_timm_model, map_pool
from vlprompt.backbones.timm_vit import pool_tokens
from vlprompt.core.errors import VlpromptError


def identity_rope_rows(rope: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` rope rows that rotate nothing, shaped like ``rope``'s rows: sin half 0, cos half 1.

    timm's ``apply_rot_embed_cat`` splits the last dim into (sin, cos) and computes x·cos + rot(x)·sin, so these
    rows return x exactly.
    """
    shape = list(rope.shape)
    shape[-2] = count
    half = shape[-1] // 2
    sin = rope.new_zeros(*shape[:-1], half)
    cos = rope.new_ones(*shape[:-1], shape[-1] - half)
    return torch.cat([sin, cos], dim=-1)


def rope_with_prompts(rope: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """timm's rope table [..., N, D] with identity rows for the prompts that sit before the patches."""
    if num_prompts == 0:
        return rope
    return torch.cat([identity_rope_rows(rope, num_prompts), rope], dim=-2)


class EvaVisionTower(VisionTower):
    """timm ``Eva`` (EVA-02 / EVA-CLIP): abs + rotary position embedding, SwiGLU MLPs, CLS / mean / MAP readout.

    ``keep_head`` keeps timm's head after pooling: inside open_clip (``TimmModel``) it is CLIP's image projection.
    """

    def __init__(self, model: nn.Module, pooling: str | None = None, keep_head: bool = False) -> None:
        super().__init__()
        if getattr(model, "dynamic_img_size", False):
            raise VlpromptError(
                "This timm EVA model was built with dynamic_img_size=True (rope table per input size); vlprompt "
                "needs a fixed image size. Create it with dynamic_img_size=False."
            )
        if model.patch_drop is not None:
            raise VlpromptError(
                "This timm EVA model drops patches (patch_drop_rate > 0), which reorders the rope table per image; "
                "create it with patch_drop_rate=0."
            )
        adopt_timm_model(self, model, pooling, keep_head)
        self.num_patches = int(model.patch_embed.num_patches)
        for index, block in enumerate(model.blocks):
            if int(getattr(block.attn, "num_prefix_tokens", self.num_prefix_tokens)) != self.num_prefix_tokens:
                raise VlpromptError(
                    f"Block {index} of this EVA model skips rope for a different number of prefix tokens than the "
                    "model has; vlprompt cannot place prompts in it."
                )

    def _rope(self, index: int, num_prompts: int, tokens: torch.Tensor) -> torch.Tensor | None:
        """Block ``index``'s rope table for a sequence with ``num_prompts`` prompts, or None without rope."""
        model = self.model
        if model.rope is None:
            return None
        if hasattr(model.rope, "feat_shape"):
            rope = model.rope.get_embed()
        else:
            rope = model.rope.get_embed(shape=model.patch_embed.grid_size)
        if getattr(model, "rope_mixed", False):
            rope = rope[index]
        return rope_with_prompts(rope.to(tokens.device), num_prompts)

    def pre_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.norm_pre(tokens)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        tokens, _ = model._pos_embed(model.patch_embed(images))
        return model.norm_pre(tokens)

    def block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        num_prompts = tokens.shape[1] - self.num_prefix_tokens - self.num_patches
        if num_prompts < 0:
            raise ValueError(
                f"block {index} got {tokens.shape[1]} tokens, fewer than the {self.num_prefix_tokens} prefix + "
                f"{self.num_patches} patch tokens of this EVA model"
            )
        return self.model.blocks[index](tokens, rope=self._rope(index, num_prompts, tokens))

    def block_modules(self) -> Sequence[nn.Module]:
        return list(self.model.blocks)

    def tower_sites(self) -> BlockSites:
        """EVA's places outside its blocks, as timm's ViT: the patch projection, the final norm, the class token
        where the model has one."""
        model = self.model
        places: dict[str, tuple[nn.Module, str]] = {"patch_proj": (model.patch_embed, "proj"), "norm_final": (model, "norm")}
        if model.cls_token is not None:
            places["class_token"] = (model, "cls_token")
        return BlockSites(places, known=TOWER_SITES)

    def finalize(self, tokens: torch.Tensor, num_prompts: int = 0, pool_prompts: bool = False) -> torch.Tensor:
        model = self.model
        tokens = model.norm(tokens)
        if self.pooling == "map":
            pooled = map_pool(
                model.attn_pool, tokens, self.num_prefix_tokens, num_prompts, pool_prompts, self._pool_include_prefix
            )
        else:
            pooled = pool_tokens(
                tokens, self.pooling, self.num_prefix_tokens, num_prompts, pool_prompts, self._pool_include_prefix
            )
        pooled = model.fc_norm(pooled)
        return model.head(model.head_drop(pooled)) if self.keep_head else pooled

    def attention_projections(self, index: int) -> AttentionProjections:
        attn = self.model.blocks[index].attn
        if getattr(attn, "qkv", None) is not None or getattr(attn, "q_proj", None) is None:
            raise VlpromptError(
                f"Block {index} of this EVA model packs q, k, v into one projection (qkv_fused=True); LoRA reaches "
                "EVA attention with separate q/k/v projections (the EVA-CLIP towers: qkv_fused=False)."
            )
        return AttentionProjections(owner=attn, separate={"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"})

    def block_sites(self, index: int) -> BlockSites:
        """EVA's places. Absent: ``attn_qkv`` where q, k, v are separate or where the fused weight is read directly
        with separate biases (timm then bypasses the module), ``mlp_in`` on gated (SwiGLU) MLPs, the norms on
        post-norm blocks (their norms come after the sub-layer, not before)."""
        from timm.models.eva import EvaBlockPostNorm

        block = self.model.blocks[index]
        attn, mlp = block.attn, block.mlp
        places: dict[str, tuple[nn.Module, str]] = {"attn": (block, "attn"), "mlp": (block, "mlp")}
        if not isinstance(block, EvaBlockPostNorm):
            places["norm_attn"] = (block, "norm1")
            places["norm_mlp"] = (block, "norm2")
        if getattr(attn, "qkv", None) is not None and getattr(attn, "q_bias", None) is None:
            places["attn_qkv"] = (attn, "qkv")
        places["attn_out"] = (attn, "proj")
        if isinstance(getattr(mlp, "fc1", None), nn.Linear):
            places["mlp_in"] = (mlp, "fc1")
        if isinstance(getattr(mlp, "fc2", None), nn.Linear):
            places["mlp_out"] = (mlp, "fc2")
        return BlockSites(places=places)
