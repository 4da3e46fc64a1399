"""Vision prompts of the vision-language deep methods (IVLP, MaPLe, PromptSRC) on a CLIP image tower.

Layer 0's prompts are appended to the embedded sequence before CLIP's ln_pre in the official code, so they pass
through it (``VisionTower.pre_norm``, exact since the norm acts per token); layers 1..J-1 overwrite the previous
layer's outputs at the prompt positions; after layer J-1 the prompt outputs flow on through the remaining blocks.
The official code appends the prompts after the patches; here they sit right after the class token, as VPT's do
(prompts carry no position embedding, so with CLS pooling the position changes nothing). The prompts may be
parameters (IVLP: ``DeepVisionPrompts``) or computed (MaPLe: coupled from the text prompts).

This differs from ``prompts/visual.py`` (VPT) in three ways that come from the official code: the ln_pre on
layer 0, N(0, 0.02) init, and any depth 0..N rather than shallow or all blocks (a depth beyond N prompts all
N blocks, as the official code does on a shallower tower).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vlprompt.backbones.base import VisionTower
from vlprompt.core.errors import ConfigError
from vlprompt.prompts.deep_text import clamp_depth

VISION_INIT_STD = 0.02


class DeepVisionPrompts(nn.Module):
    """``depth`` sets of ``n_ctx`` learned tokens ([J, n, d]), N(0, 0.02) as in the official IVLP code."""

    def __init__(self, visual: VisionTower, n_ctx: int, depth: int) -> None:
        super().__init__()
        if depth < 0:
            raise ConfigError(f"Vision prompt depth {depth} must be at least 0 (0: no vision prompts).")
        depth = clamp_depth(depth, visual.num_blocks, "vision")
        if depth > 0 and n_ctx < 1:
            raise ConfigError(f"n_ctx_vision = {n_ctx} must be at least 1 when the vision prompt depth is {depth}.")
        device = next(visual.parameters()).device
        self.tokens = nn.Parameter(torch.empty(depth, n_ctx, visual.width, device=device).normal_(0.0, VISION_INIT_STD))

    def layer_prompts(self) -> list[torch.Tensor]:
        return list(self.tokens.unbind(0))


def layered_vision_forward(
    visual: VisionTower, layer_prompts: Sequence[torch.Tensor], images: torch.Tensor
) -> torch.Tensor:
    """Image features [B, feature_dim] with ``layer_prompts[i]`` ([n, d]) entering block i for i < J."""
    tokens = visual.embed(images)
    num_prefix = visual.num_prefix_tokens
    if len(layer_prompts) > visual.num_blocks:
        raise ValueError(f"{len(layer_prompts)} vision prompt layers for {visual.num_blocks} blocks")
    count = int(layer_prompts[0].shape[0]) if layer_prompts else 0
    batch = tokens.shape[0]
    for index in range(visual.num_blocks):
        if index < len(layer_prompts):
            prompts = layer_prompts[index].to(tokens.dtype).unsqueeze(0).expand(batch, -1, -1)
            if index == 0:
                kept = tokens[:, num_prefix:]
                prompts = visual.pre_norm(prompts)
            else:
                kept = tokens[:, num_prefix + count :]
            tokens = torch.cat([tokens[:, :num_prefix], prompts, kept], dim=1)
        tokens = visual.block(index, tokens)
    return visual.finalize(tokens, num_prompts=count, pool_prompts=False)
