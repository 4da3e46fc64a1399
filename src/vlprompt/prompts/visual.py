"""Visual token prompts (VPT) and the prompted forward pass through an adapter's seams.

Prompts sit right after the prefix tokens: the sequence entering block 0 is ``[prefix, prompts, patches]``.
Prompts get no position embedding, so for a ViT (permutation-equivariant blocks) their position is irrelevant.
Shallow prompts are inserted once and flow through every block; deep prompts are a fresh set per block that
overwrites the previous block's outputs at the prompt positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from vlprompt.backbones.base import VisionTower

# Called with (block index, tokens entering that block) by prompted_forward; used by NMI and token collection.
BlockInputHook = Callable[[int, torch.Tensor], None]


def vpt_uniform_bound(patch_size: int, width: int) -> float:
    """VPT's init bound: Xavier-uniform with the patch embedding's fan-in, sqrt(6 / (3*P*P + d))."""
    return math.sqrt(6.0 / (3 * patch_size * patch_size + width))


class VisualPrompts(nn.Module):
    """``num_tokens`` learnable tokens for each of ``depth`` insertion points (1: shallow, num_blocks: deep).

    With ``projection_dim`` k the tokens are learned at width k and mapped to the model width by one Linear
    shared across blocks (VPT's projection option). Dropout acts on the (projected) prompts only.
    """

    def __init__(
        self,
        num_tokens: int,
        width: int,
        depth: int = 1,
        dropout: float = 0.0,
        projection_dim: int | None = None,
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        if num_tokens < 0 or depth < 1:
            raise ValueError(f"VisualPrompts needs num_tokens >= 0 and depth >= 1, got {num_tokens}, {depth}")
        self.num_tokens = num_tokens
        self.width = width
        self.depth = depth
        learned_width = projection_dim or width
        self.tokens = nn.Parameter(torch.empty(depth, num_tokens, learned_width))
        self.projection = nn.Linear(projection_dim, width) if projection_dim else None
        self.dropout = nn.Dropout(dropout)
        self.init_bound = vpt_uniform_bound(patch_size, learned_width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.tokens, -self.init_bound, self.init_bound)
        if self.projection is not None:
            nn.init.kaiming_normal_(self.projection.weight, a=0, mode="fan_out")
            nn.init.zeros_(self.projection.bias)

    @torch.no_grad()
    def set_tokens(self, values: torch.Tensor) -> None:
        """Overwrite the prompts with given values [depth, num_tokens, width] (SPT prototypes)."""
        if self.projection is not None:
            raise ValueError(
                "prompts with a projection are learned at width k and cannot take width-d values"
            )
        if tuple(values.shape) != tuple(self.tokens.shape):
            raise ValueError(
                f"prompt values have shape {tuple(values.shape)}, expected {tuple(self.tokens.shape)}"
            )
        self.tokens.copy_(values.to(self.tokens.device, self.tokens.dtype))

    def prompts(self, layer: int, batch_size: int) -> torch.Tensor:
        """The prompts for insertion point ``layer``, at model width, expanded over the batch: [B, p, d]."""
        tokens = self.tokens[layer]
        if self.projection is not None:
            tokens = self.projection(tokens)
        return self.dropout(tokens).unsqueeze(0).expand(batch_size, -1, -1)

    def insert(self, tokens: torch.Tensor, layer: int, num_prefix: int) -> torch.Tensor:
        """[prefix, patches] -> [prefix, prompts, patches]."""
        prompts = self.prompts(layer, tokens.shape[0]).to(tokens.dtype)
        return torch.cat([tokens[:, :num_prefix], prompts, tokens[:, num_prefix:]], dim=1)

    def replace(self, tokens: torch.Tensor, layer: int, num_prefix: int) -> torch.Tensor:
        """Discard the previous block's outputs at the prompt positions and put this layer's prompts there."""
        prompts = self.prompts(layer, tokens.shape[0]).to(tokens.dtype)
        end = num_prefix + self.num_tokens
        return torch.cat([tokens[:, :num_prefix], prompts, tokens[:, end:]], dim=1)


def prompted_tokens(
    visual: VisionTower,
    prompts: VisualPrompts | None,
    images: torch.Tensor,
    on_block_input: BlockInputHook | None = None,
) -> torch.Tensor:
    """Tokens after the last block, with prompts inserted through the seams.

    ``prompts`` None or ``depth`` 1 gives the shallow pass; ``depth == visual.num_blocks`` the deep one.
    ``on_block_input(i, tokens)`` sees the sequence entering block i (prompts included).
    """
    num_prefix = visual.num_prefix_tokens
    if prompts is not None and prompts.depth not in (1, visual.num_blocks):
        raise ValueError(
            f"prompt depth {prompts.depth} fits neither shallow (1) nor deep ({visual.num_blocks})"
        )
    tokens = visual.embed(images)
    if prompts is not None:
        tokens = prompts.insert(tokens, 0, num_prefix)
    for index in range(visual.num_blocks):
        if prompts is not None and prompts.depth > 1 and index > 0:
            tokens = prompts.replace(tokens, index, num_prefix)
        if on_block_input is not None:
            on_block_input(index, tokens)
        tokens = visual.block(index, tokens)
    return tokens


def prompted_forward(
    visual: VisionTower,
    prompts: VisualPrompts | None,
    images: torch.Tensor,
    pool_prompts: bool = True,
    on_block_input: BlockInputHook | None = None,
) -> torch.Tensor:
    """Image features [B, feature_dim] read out by the backbone's own pooling, prompts in the sequence."""
    tokens = prompted_tokens(visual, prompts, images, on_block_input)
    num_prompts = 0 if prompts is None else prompts.num_tokens
    return visual.finalize(tokens, num_prompts=num_prompts, pool_prompts=pool_prompts)


def prompted_block_outputs(
    visual: VisionTower, prompts: VisualPrompts | None, images: torch.Tensor, blocks: tuple[int, ...]
) -> dict[int, torch.Tensor]:
    """The token sequences leaving each block in ``blocks`` (0-based), prompts in the sequence, for heads that read
    more than the last block (SETR's auxiliary heads). Under deep prompts a block's output is read before the next
    block's prompts replace the prompt positions; the patch tokens are the same either way."""
    wanted = set(blocks)
    outputs: dict[int, torch.Tensor] = {}

    def keep(index: int, tokens: torch.Tensor) -> None:
        if index - 1 in wanted:
            outputs[index - 1] = tokens

    final = prompted_tokens(visual, prompts, images, keep if len(wanted) > 1 else None)
    outputs[visual.num_blocks - 1] = final
    return {b: outputs[b] for b in blocks}
