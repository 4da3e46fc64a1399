"""How the class suffixes of one text step are cut into encoder calls: by own length, within a memory budget.

After the shared [SOS, ctx] prefix, each class has its own tokens up to its EOT (ImageNet: 1 to 10+, mean about
4). Running them padded to the longest wastes most of the step, so classes are grouped by their own length and
every length group runs unpadded; the groups of one call are packed token by token for the linear layers
(``pack_calls``; the tower's ``run_layer_after_prefix``), so each weight meets one large matrix product.

Autograd keeps the activations of every call until backward. When the whole step's activations fit the budget,
nothing is recomputed; otherwise calls are stored while the budget allows and only the overflow is recomputed in
backward (activation checkpointing), in pieces small enough that one recomputed piece fits beside them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

DEFAULT_TEXT_MEMORY_MB = 4096.0
RECOMPUTE_PIECE = 0.25  # a recomputed piece takes at most this share of the budget


@dataclass(frozen=True)
class SuffixChunk:
    """One encoder call: the classes ``rows`` (all with ``length`` own tokens), recomputed in backward or not."""

    rows: torch.Tensor
    length: int
    recompute: bool
    nbytes: int


def shared_prefix_length(token_ids: torch.Tensor, eot: torch.Tensor, context_end: int) -> int:
    """Length of the prefix every class prompt shares: [start tokens, context] (positions below ``context_end``)
    and then every position where all classes hold the same token, stopping before the first EOT.

    The fixed words between the context and the class name (MaPLe's and IVLP's "of a" after a 2-token context,
    CoOp's init words that tokenise past their slots) are the same tokens at the same positions for every class,
    so under causality their hidden states are too: they run once per prefix instead of once per class. Every
    class keeps at least its EOT as its own token (the pooled position).
    """
    stop = int(eot.min())
    length = context_end
    while length < stop and bool((token_ids[:, length] == token_ids[0, length]).all()):
        length += 1
    return length


def length_groups(own_lengths: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(length, class indices) for each distinct own length, shortest first."""
    lengths = own_lengths.cpu()
    return [(int(n), torch.nonzero(lengths == n).flatten()) for n in torch.unique(lengths).tolist()]


def plan_suffix_chunks(
    own_lengths: torch.Tensor,
    row_bytes: Callable[[int], int],
    budget_bytes: float | None,
    max_rows: int | None = None,
) -> list[SuffixChunk]:
    """Encoder calls covering every class once.

    ``row_bytes(length)``: activation bytes autograd keeps for one class of that own length (all prefixes
    included); ``budget_bytes``: None when nothing is kept (no gradients), else the memory the step may hold;
    ``max_rows``: an optional cap on classes per call (a caller's explicit chunk).
    """
    groups = length_groups(own_lengths)
    total = sum(row_bytes(length) * len(rows) for length, rows in groups)
    fits = budget_bytes is None or total <= budget_bytes
    piece = None if fits else max(1.0, RECOMPUTE_PIECE * budget_bytes)
    chunks: list[SuffixChunk] = []
    for length, rows in groups:
        per_row = max(1, row_bytes(length))
        size = len(rows) if piece is None else max(1, int(piece // per_row))
        if max_rows:
            size = min(size, max_rows)
        for start in range(0, len(rows), size):
            part = rows[start : start + size]
            chunks.append(SuffixChunk(part, length, False, per_row * len(part)))
    if fits:
        return chunks
    keep = budget_bytes - max(c.nbytes for c in chunks)
    planned, held = [], 0
    for chunk in chunks:
        store = held + chunk.nbytes <= keep
        held += chunk.nbytes if store else 0
        planned.append(SuffixChunk(chunk.rows, chunk.length, not store, chunk.nbytes))
    return planned


def pack_calls(chunks: list[SuffixChunk], max_rows: int | None = None) -> list[list[SuffixChunk]]:
    """Consecutive chunks with the same recompute decision packed into one encoder call (their tokens share each
    weight's matrix product), up to ``max_rows`` classes per call when given. A recomputed chunk stays alone, so
    one recomputed call never holds more than its piece of the budget."""
    calls: list[list[SuffixChunk]] = []
    for chunk in chunks:
        last = calls[-1] if calls else None
        if (
            last is not None
            and not chunk.recompute
            and not last[0].recompute
            and (max_rows is None or sum(len(c.rows) for c in last) + len(chunk.rows) <= max_rows)
        ):
            last.append(chunk)
        else:
            calls.append([chunk])
    return calls
