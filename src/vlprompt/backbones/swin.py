"""Adapter over timm's ``SwinTransformer``, with VPT's Swin prompting (KMnP/vpt ``vit_prompt/swin_transformer.py``).

Tokens travel flat, ``[B, p + H*W, C]``: ``p`` prompt tokens (no prefix; Swin has no class token) before the patch
grid of the current stage. The blocks are numbered across stages (``num_blocks = sum(depths)``); timm runs a stage's
patch merging before its first block, so ``transition(i)`` merges there and ``block(i)`` = transition + block.

What the official prompted Swin does with prompt tokens, and this adapter does too:
- every window of every block attends to the prompts: the same ``p`` prompts are prepended to each window, with
  zero relative-position bias and zero shift mask for every pair involving a prompt; the prompts' attention
  outputs are then averaged over the windows;
- the block's norms, residuals and MLP act on the prompts like on any token;
- patch merging widens the prompts by concatenating four copies of each (C -> 4C) before the merge's norm and
  reduction (4C -> 2C), so shallow prompts flow through every stage;
- the readout is the final norm and the mean over all tokens, prompts included.

Where this differs: the official block pairs prompt row ``w*B + b`` with window row ``w*B + b``, which belongs to
sample ``(w*B + b) // nW``, so once the prompts differ per sample (after the first block of a shallow run) a sample's
prompts meet other samples' windows and the output depends on the batch. Here each sample's prompts meet its own
windows; both agree for batch size 1 and for deep prompts wherever a stage has a single window (224 px Swin).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vlprompt.backbones.base import TOWER_SITES, Backbone, BlockSites, VisionTower
from vlprompt.backbones.prompt_support import PromptSupport
from vlprompt.backbones.timm_vit import pool_tokens, timm_preprocess
from vlprompt.core.errors import VlpromptError


def _window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, wh * ww, C], windows of one sample consecutive (timm's order)."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window[0], window[0], width // window[1], window[1], channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], channels)


def _window_reverse(windows: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    channels = windows.shape[-1]
    x = windows.view(-1, height // window[0], width // window[1], window[0], window[1], channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


class SwinVisionTower(VisionTower):
    """A timm Swin Transformer (v1) as a flat token pipeline with per-stage prompt widths."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if getattr(model, "dynamic_img_size", False):
            raise VlpromptError(
                "This timm Swin was built with dynamic_img_size / strict_img_size=False; vlprompt's Swin adapter "
                "needs the fixed grid the model was built for. Create it with the default strict_img_size=True."
            )
        if model.get_classifier() is not None and not isinstance(model.get_classifier(), nn.Identity):
            model.reset_classifier(0)
        self.model = model
        self.pooling = "mean"
        self.num_prefix_tokens = 0
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.width = int(model.layers[0].blocks[0].dim)
        self.feature_dim = int(model.num_features)
        blocks, stage_starts = [], []
        for stage in model.layers:
            stage_starts.append(len(blocks))
            blocks.extend(stage.blocks)
        self._blocks = blocks
        self._stage_of = [s for s, stage in enumerate(model.layers) for _ in stage.blocks]
        self._stage_starts = tuple(stage_starts)
        self.num_blocks = len(blocks)

    # ----- the token pipeline -----
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.model.patch_embed(images)  # [B, H, W, C] (timm's NHWC)
        return tokens.flatten(1, 2)

    def _grid(self, tokens: torch.Tensor, num_prompts: int, resolution: Sequence[int]) -> torch.Tensor:
        height, width = resolution
        patches = tokens[:, num_prompts:]
        if patches.shape[1] != height * width:
            raise VlpromptError(
                f"Swin block input holds {patches.shape[1]} patch tokens, expected {height}x{width}; images must "
                "have the size the model was built for."
            )
        return patches.reshape(tokens.shape[0], height, width, tokens.shape[-1])

    def transition(self, index: int, tokens: torch.Tensor, num_prompts: int) -> torch.Tensor:
        """Patch merging before the first block of stages 1.. (timm's placement; the official code merges at the
        end of the previous stage, the same function). Prompts: four copies concatenated, then norm + reduction."""
        if index == 0 or index not in self._stage_starts:
            return tokens
        stage = self.model.layers[self._stage_of[index]]
        merge = stage.downsample
        if isinstance(merge, nn.Identity):
            return tokens
        grid = merge(self._grid(tokens, num_prompts, stage.input_resolution)).flatten(1, 2)
        if not num_prompts:
            return grid
        prompts = tokens[:, :num_prompts]
        prompts = merge.reduction(merge.norm(torch.cat([prompts] * 4, dim=-1)))
        return torch.cat([prompts, grid], dim=1)

    def block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        return self.prompted_block(index, self.transition(index, tokens, 0), 0)

    def prompted_block(self, index: int, tokens: torch.Tensor, num_prompts: int) -> torch.Tensor:
        block = self._blocks[index]
        if not num_prompts:  # timm's own block
            grid = self._grid(tokens, 0, block.input_resolution)
            return block(grid).flatten(1, 2)
        shortcut = tokens
        normed = block.norm1(tokens)
        prompts = normed[:, :num_prompts]
        grid = self._grid(normed, num_prompts, block.input_resolution)
        attended_prompts, attended_grid = self._prompted_window_attention(block, grid, prompts)
        tokens = shortcut + block.drop_path1(torch.cat([attended_prompts, attended_grid.flatten(1, 2)], dim=1))
        return tokens + block.drop_path2(block.mlp(block.norm2(tokens)))

    def _prompted_window_attention(
        self, block: nn.Module, grid: torch.Tensor, prompts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """timm's shifted-window attention with every window also attending to (and updating) the prompts."""
        batch, height, width, channels = grid.shape
        window, shift = tuple(block.window_size), tuple(block.shift_size)
        shifted = torch.roll(grid, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if any(shift) else grid
        pad_h = (window[0] - height % window[0]) % window[0]
        pad_w = (window[1] - width % window[1]) % window[1]
        shifted = nn.functional.pad(shifted, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = shifted.shape[1:3]
        windows = _window_partition(shifted, window)  # [B*nW, A, C]
        num_windows = windows.shape[0] // batch
        count = prompts.shape[1]
        sequence = torch.cat([prompts.repeat_interleave(num_windows, dim=0), windows], dim=1)
        mask = block.get_attn_mask(shifted) if block.dynamic_mask else block.attn_mask
        out = self._attention(block.attn, sequence, count, mask, num_windows)
        prompt_out = out[:, :count].reshape(batch, num_windows, count, channels).mean(dim=1)
        grid_out = _window_reverse(out[:, count:], window, padded_h, padded_w)[:, :height, :width]
        if any(shift):
            grid_out = torch.roll(grid_out, shifts=shift, dims=(1, 2))
        return prompt_out, grid_out

    @staticmethod
    def _attention(
        attn: nn.Module, x: torch.Tensor, count: int, mask: torch.Tensor | None, num_windows: int
    ) -> torch.Tensor:
        """WindowAttention on [prompts, window] rows: bias and mask are zero wherever a prompt is involved."""
        rows, length, _ = x.shape
        heads = attn.num_heads
        q, k, v = attn.qkv(x).reshape(rows, length, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = nn.functional.pad(attn._get_rel_pos_bias(), (count, 0, count, 0))  # [1, heads, N, N]
        scores = (q * attn.scale) @ k.transpose(-2, -1) + bias
        if mask is not None:
            mask = nn.functional.pad(mask, (count, 0, count, 0)).to(scores.dtype)  # [nW, N, N]
            scores = (scores.view(-1, num_windows, heads, length, length) + mask.unsqueeze(1).unsqueeze(0)).view(
                rows, heads, length, length
            )
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(rows, length, -1)
        return attn.proj(out)

    def block_modules(self) -> Sequence[nn.Module]:
        return list(self._blocks)

    def finalize(self, tokens: torch.Tensor, num_prompts: int = 0, pool_prompts: bool = False) -> torch.Tensor:
        """Final norm, then the mean over the tokens (prompts included when ``pool_prompts``, as the official)."""
        return pool_tokens(self.model.norm(tokens), "mean", 0, num_prompts, pool_prompts)

    def mean_readout(self, tokens: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
        return self.model.norm(tokens)[:, start:stop].mean(dim=1)

    # ----- declared seams -----
    def prompt_support(self) -> PromptSupport:
        widths = tuple(int(block.dim) for block in self._blocks)
        not_vit = "the official code reads it only in its ViT models"
        return PromptSupport(
            kind="windows",
            block_widths=widths,
            locations=("prepend", "add-1"),
            deep_locations=("prepend",),
            refusals={
                "add": "the official Swin 'add' sizes its prompt from a ViT position-embedding table Swin does "
                "not have (it fails there); use add-1 or prepend",
                "below": "the official Swin 'below' normalises with a transform it never defines (it fails "
                "there); use prepend",
                "pad": "the official Swin 'pad' builds the model at size S+2p, whose stage grids its window "
                "partition cannot split (7 | (S+2p)/32 only for p a multiple of 112); use prepend",
                "prepend-pixel": "the official code has pixel prompts only for ViTs",
                "img_pool": not_vit,
                "prompt_pool": not_vit,
                "imgprompt_pool": not_vit,
                "partial-depth": "the official Swin prompt code has one set per block of every stage and no "
                "partial, reversed or shared depth",
            },
        )

    def stage_starts(self) -> tuple[int, ...]:
        return self._stage_starts

    def block_sites(self, index: int) -> BlockSites:
        """Swin blocks' named places. There is no whole-attention place: the window attention sees windows
        (with prompts prepended), not the block's token sequence."""
        block = self._blocks[index]
        return BlockSites(
            places={
                "norm_attn": (block, "norm1"),
                "attn_qkv": (block.attn, "qkv"),
                "attn_out": (block.attn, "proj"),
                "norm_mlp": (block, "norm2"),
                "mlp": (block, "mlp"),
                "mlp_in": (block.mlp, "fc1"),
                "mlp_out": (block.mlp, "fc2"),
            }
        )

    def tower_sites(self) -> BlockSites:
        """The patch projection (C channels) and the final norm (the last stage's width); Swin has no class token,
        so CLS-token tuning is refused by the site lookup."""
        model = self.model
        return BlockSites({"patch_proj": (model.patch_embed, "proj"), "norm_final": (model, "norm")}, known=TOWER_SITES)


def wrap_timm_swin(model: nn.Module, backbone_id: str) -> Backbone:
    """A timm ``SwinTransformer`` as a Backbone (mean readout, as the official Swin)."""
    from timm.models.swin_transformer import SwinTransformer

    if not isinstance(model, SwinTransformer):
        raise VlpromptError(f"Backbone '{backbone_id}' is a timm {type(model).__name__}, not a SwinTransformer.")
    return Backbone(
        backbone_id=backbone_id,
        visual=SwinVisionTower(model),
        preprocess=timm_preprocess(model),
        kind="swin",
        extra={"model": model},
    )
