"""Visual token prompts (VPT) and the prompted forward pass through an adapter's seams.

Prompts sit right after the prefix tokens: the sequence entering block 0 is ``[prefix, prompts, patches]``.
Prompts get no position embedding, so for a ViT (permutation-equivariant blocks) their position is irrelevant.
Shallow prompts are inserted once and flow through every block; deep prompts are a fresh set per block that
overwrites the previous block's outputs at the prompt positions.

The official ablations (KMnP/vpt ``vit_prompt/vit_ablations.py``) are options of the same module:
- location ``add`` adds a prompt to every token (one per position, CLS included; the count is the sequence
  length), ``add-1`` adds one prompt to every token; deep variants add a fresh set at each deep block;
- partial depth (``DeepPlan``): fresh sets only at the first ``num_deep_layers`` blocks, or (``reverse``) only at
  the last ones, or one set ``shared`` by every deep block; ``noexpand`` removes the prompts after the last
  prompted block.
Swin towers (kind ``windows``) take the same prompts with one width per block (``widths``); their windows and
patch merging are the adapter's business (backbones/swin.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vlprompt.backbones.base import VisionTower

# Called with (block index, tokens entering that block) by prompted_forward; used by NMI and token collection.
BlockInputHook = Callable[[int, torch.Tensor], None]
TOKEN_LOCATIONS = ("prepend", "add", "add-1")


def vpt_uniform_bound(patch_size: int, width: int) -> float:
    """VPT's init bound: Xavier-uniform with the patch embedding's fan-in, sqrt(6 / (3*P*P + d))."""
    return math.sqrt(6.0 / (3 * patch_size * patch_size + width))


@dataclass(frozen=True)
class DeepPlan:
    """Which blocks take a stored prompt set, as the official MODEL.PROMPT.{DEEP, NUM_DEEP_LAYERS, REVERSE_DEEP,
    DEEP_SHARED} decide it.

    Shallow: one set, entering block 0. Deep: set i enters block i for i < n (n = ``num_deep_layers`` or every
    block); blocks from n on see the last set's outputs flow on. Reversed: no prompt before block N-n, set j enters
    block N-n+j. Shared: one set, entering every deep block.
    """

    num_blocks: int
    deep: bool = False
    num_deep_layers: int | None = None
    reverse: bool = False
    shared: bool = False
    noexpand: bool = False  # drop the prompt tokens at the first block past the deep ones (FORWARD_DEEP_NOEXPAND)

    @property
    def layers(self) -> int:
        """How many blocks take a set."""
        if not self.deep:
            return 1
        return self.num_blocks if self.num_deep_layers is None else self.num_deep_layers

    @property
    def num_sets(self) -> int:
        return 1 if self.shared else self.layers

    @property
    def first_block(self) -> int:
        return self.num_blocks - self.layers if self.reverse else 0

    def drops_prompts_at(self, block: int) -> bool:
        """Whether the prompt tokens leave the sequence before ``block`` (the official FORWARD_DEEP_NOEXPAND:
        from the first block past the deep ones on, the sequence is back to its unprompted length)."""
        return self.noexpand and self.deep and not self.reverse and block == self.layers

    def set_index(self, block: int) -> int | None:
        """The stored set entering ``block``, or None where no fresh set enters."""
        offset = block - self.first_block
        if offset < 0 or offset >= self.layers:
            return None
        return 0 if self.shared else offset


class VisualPrompts(nn.Module):
    """Learnable tokens, one set of ``num_tokens`` per entry of ``plan`` (default: shallow, or ``depth`` sets).

    With ``projection_dim`` k the tokens are learned at width k and mapped to the model width by one Linear
    shared across blocks (VPT's projection option). Dropout acts on the (projected) prompts only. ``widths`` gives
    each set's model width when they differ (Swin: the width of the stage the set enters); sets of one width are
    stored together, so a ViT's prompts are one tensor ``tokens`` [sets, p, d].
    """

    def __init__(
        self,
        num_tokens: int,
        width: int,
        depth: int = 1,
        dropout: float = 0.0,
        projection_dim: int | None = None,
        patch_size: int = 16,
        plan: DeepPlan | None = None,
        location: str = "prepend",
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        plan = plan or DeepPlan(num_blocks=depth, deep=depth > 1)
        if num_tokens < 0 or plan.num_sets < 1:
            raise ValueError(f"VisualPrompts needs num_tokens >= 0 and at least one set, got {num_tokens}, {plan}")
        if location not in TOKEN_LOCATIONS:
            raise ValueError(f"VisualPrompts location must be one of {TOKEN_LOCATIONS}, got {location!r}")
        widths = tuple(widths) if widths is not None else (width,) * plan.num_sets
        if len(widths) != plan.num_sets:
            raise ValueError(f"{len(widths)} prompt widths for {plan.num_sets} prompt sets")
        if projection_dim and len(set(widths)) > 1:
            raise ValueError("a prompt projection maps to one width; these prompt sets have several")
        self.num_tokens = num_tokens
        self.width = width
        self.plan = plan
        self.location = location
        self.widths = widths
        learned_width = projection_dim or width
        # runs of equal width: (first set, count, width); a ViT has one run
        runs: list[list[int]] = []
        for index, set_width in enumerate(widths):
            if runs and runs[-1][2] == set_width:
                runs[-1][1] += 1
            else:
                runs.append([index, 1, set_width])
        self._runs = [tuple(run) for run in runs]
        if len(runs) == 1:
            self.tokens = nn.Parameter(torch.empty(plan.num_sets, num_tokens, projection_dim or widths[0]))
            self.stage_tokens = None
        else:
            self.tokens = None
            self.stage_tokens = nn.ParameterList(
                [nn.Parameter(torch.empty(count, num_tokens, run_width)) for _, count, run_width in runs]
            )
        self.projection = nn.Linear(projection_dim, width) if projection_dim else None
        self.dropout = nn.Dropout(dropout)
        self.init_bound = vpt_uniform_bound(patch_size, learned_width)
        self.reset_parameters()

    @property
    def depth(self) -> int:
        """Stored sets (1: shallow; the number of blocks: full deep)."""
        return self.plan.num_sets

    def reset_parameters(self) -> None:
        for tensor in self._stores():
            nn.init.uniform_(tensor, -self.init_bound, self.init_bound)
        if self.projection is not None:
            nn.init.kaiming_normal_(self.projection.weight, a=0, mode="fan_out")
            nn.init.zeros_(self.projection.bias)

    def _stores(self) -> list[nn.Parameter]:
        return [self.tokens] if self.tokens is not None else list(self.stage_tokens)

    def raw(self, index: int) -> torch.Tensor:
        """Stored set ``index`` as learned (before projection and dropout): [p, learned width]."""
        if self.tokens is not None:
            return self.tokens[index]
        for store, (first, count, _) in zip(self.stage_tokens, self._runs):
            if first <= index < first + count:
                return store[index - first]
        raise IndexError(f"prompt set {index} of {self.depth}")

    @torch.no_grad()
    def set_tokens(self, values: torch.Tensor) -> None:
        """Overwrite the prompts with given values [depth, num_tokens, width] (SPT prototypes)."""
        if self.projection is not None:
            raise ValueError(
                "prompts with a projection are learned at width k and cannot take width-d values"
            )
        if self.tokens is None:
            raise ValueError("prompts of several widths (Swin stages) cannot take one value tensor")
        if tuple(values.shape) != tuple(self.tokens.shape):
            raise ValueError(
                f"prompt values have shape {tuple(values.shape)}, expected {tuple(self.tokens.shape)}"
            )
        self.tokens.copy_(values.to(self.tokens.device, self.tokens.dtype))

    def prompts(self, layer: int, batch_size: int) -> torch.Tensor:
        """Stored set ``layer`` at model width, expanded over the batch: [B, p, d]."""
        tokens = self.raw(layer)
        if self.projection is not None:
            tokens = self.projection(tokens)
        return self.dropout(tokens).unsqueeze(0).expand(batch_size, -1, -1)

    def insert(self, tokens: torch.Tensor, layer: int, num_prefix: int) -> torch.Tensor:
        """[prefix, patches] -> [prefix, prompts, patches]."""
        prompts = self.prompts(layer, tokens.shape[0]).to(tokens.dtype)
        return torch.cat([tokens[:, :num_prefix], prompts, tokens[:, num_prefix:]], dim=1)

    def replace(self, tokens: torch.Tensor, layer: int, num_prefix: int) -> torch.Tensor:
        """Discard the ``num_tokens`` tokens after the prefix and put this layer's prompts there."""
        prompts = self.prompts(layer, tokens.shape[0]).to(tokens.dtype)
        end = num_prefix + self.num_tokens
        return torch.cat([tokens[:, :num_prefix], prompts, tokens[:, end:]], dim=1)

    def apply(self, block: int, tokens: torch.Tensor, num_prefix: int, present: int) -> tuple[torch.Tensor, int]:
        """Prompt the tokens entering ``block``; ``present`` prompt tokens are in the sequence already.

        Returns the tokens and how many prompt tokens they now hold. At the first block of a reversed plan the
        official code overwrites the first ``p`` patch tokens (it replaces where nothing was inserted); so does
        this, since that is what produced the paper's reversed partial-depth results.
        """
        if present and self.plan.drops_prompts_at(block):
            return torch.cat([tokens[:, :num_prefix], tokens[:, num_prefix + present :]], dim=1), 0
        index = self.plan.set_index(block)
        if index is None:
            return tokens, present
        if self.location == "prepend":
            if present or (self.plan.reverse and block == self.plan.first_block):
                return self.replace(tokens, index, num_prefix), self.num_tokens
            return self.insert(tokens, index, num_prefix), self.num_tokens
        prompts = self.prompts(index, tokens.shape[0]).to(tokens.dtype)
        if self.location == "add" and prompts.shape[1] != tokens.shape[1]:
            raise ValueError(
                f"'add' prompts hold {prompts.shape[1]} tokens but the sequence has {tokens.shape[1]}"
            )
        return tokens + prompts, present  # add: one per position; add-1: [B, 1, d] broadcast to all


def prompted_tokens(
    visual: VisionTower,
    prompts: VisualPrompts | None,
    images: torch.Tensor,
    on_block_input: BlockInputHook | None = None,
) -> torch.Tensor:
    """Tokens after the last block, with prompts inserted through the seams (see ``prompted_sequence``)."""
    return prompted_sequence(visual, prompts, images, on_block_input)[0]


def prompted_sequence(
    visual: VisionTower,
    prompts: VisualPrompts | None,
    images: torch.Tensor,
    on_block_input: BlockInputHook | None = None,
    first_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Tokens after the last block and how many prompt tokens follow the prefix, prompts entering through the
    seams (``transition`` between blocks, ``prompted_block`` for each block).

    ``on_block_input(i, tokens)`` sees the sequence entering block i (prompts included); ``first_tokens`` may
    change the embedded tokens before any prompt enters (pixel-token prompts).
    """
    num_prefix = visual.num_prefix_tokens
    if prompts is not None and prompts.plan.deep and prompts.plan.num_blocks != visual.num_blocks:
        raise ValueError(
            f"prompts planned for {prompts.plan.num_blocks} blocks, the tower has {visual.num_blocks}"
        )
    tokens = visual.embed(images)
    present = 0
    if first_tokens is not None:
        before = tokens.shape[1]
        tokens = first_tokens(tokens)
        present = tokens.shape[1] - before
    for index in range(visual.num_blocks):
        tokens = visual.transition(index, tokens, present)
        if prompts is not None:
            tokens, present = prompts.apply(index, tokens, num_prefix, present)
        if on_block_input is not None:
            on_block_input(index, tokens)
        tokens = visual.prompted_block(index, tokens, present)
    return tokens, present


def read_out(
    visual: VisionTower, tokens: torch.Tensor, num_prompts: int, readout: str = "original", pool_prompts: bool = True
) -> torch.Tensor:
    """VPT's readouts (MODEL.PROMPT.VIT_POOL_TYPE): ``original`` is the backbone's own pooling (a mean pooling
    includes the prompts when ``pool_prompts``); the others average the final tokens after the prefix: the
    patches (``img_pool``), the prompts (``prompt_pool``) or both (``imgprompt_pool``)."""
    if readout == "original":
        return visual.finalize(tokens, num_prompts=num_prompts, pool_prompts=pool_prompts)
    start = visual.num_prefix_tokens
    if readout == "img_pool":
        return visual.mean_readout(tokens, start + num_prompts, None)
    if readout == "prompt_pool":
        return visual.mean_readout(tokens, start, start + num_prompts)
    if readout == "imgprompt_pool":
        return visual.mean_readout(tokens, start, None)
    raise ValueError(f"unknown readout {readout!r}")


def prompted_forward(
    visual: VisionTower,
    prompts: VisualPrompts | None,
    images: torch.Tensor,
    pool_prompts: bool = True,
    on_block_input: BlockInputHook | None = None,
    readout: str = "original",
) -> torch.Tensor:
    """Image features [B, feature_dim] read out by the backbone's own pooling (or a VPT readout), prompts in the
    sequence."""
    tokens, present = prompted_sequence(visual, prompts, images, on_block_input)
    return read_out(visual, tokens, present, readout, pool_prompts)


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
