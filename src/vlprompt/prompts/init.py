"""Prompt initialisers from the downstream data's own tokens (SPT), in one bounded-memory frozen pass.

The SPT paper clusters every patch token of the training set, which it reports takes days. Here the tokens
are streamed: each insertion point keeps at most ``token_budget`` tokens (a uniform reservoir sample for
k-means, one randomly chosen batch for the pooling and sampling strategies), so memory does not grow with the
training set. k-means runs DURING the pass: k-means++ seeds from the first streamed tokens, then mini-batch steps
on each batch's own tokens as it arrives (``StreamingKMeans``), and after the pass a few full Lloyd passes over
the reservoir; all on the tokens' device, every random draw from one seeded CPU generator. Its cost is bounded by
the frozen pass it needs (benchmarks/bench_visual_init.py measures the ratio at ViT-B/16 shape).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from vlprompt.backbones.base import VisionTower
from vlprompt.core.errors import ConfigError

log = logging.getLogger(__name__)

INITIALIZERS = ("kmeans", "mean_pool", "max_pool", "random_sample")
_CHUNK = 65536  # rows per distance computation, bounding the [n, k] distance matrix


def _uniform(generator: torch.Generator, count: int, device: torch.device) -> torch.Tensor:
    return torch.rand(count, generator=generator, dtype=torch.float64).to(device)


def squared_distances(
    x: torch.Tensor, centers: torch.Tensor, x_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """||x_i - c_j||^2 as [n, k], clamped at 0 against rounding; ``x_sq`` = precomputed ||x_i||^2."""
    x_sq = x.pow(2).sum(1) if x_sq is None else x_sq
    return torch.addmm(x_sq.unsqueeze(1) + centers.pow(2).sum(1), x, centers.T, alpha=-2).clamp_min_(0)


def _assign(
    x: torch.Tensor, centers: torch.Tensor, x_sq: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre index and squared distance of every row, computed in chunks."""
    x_sq = x.pow(2).sum(1) if x_sq is None else x_sq
    labels, dists = [], []
    for start in range(0, x.shape[0], _CHUNK):
        d = squared_distances(x[start : start + _CHUNK], centers, x_sq[start : start + _CHUNK])
        best, index = d.min(dim=1)
        labels.append(index)
        dists.append(best)
    return torch.cat(labels), torch.cat(dists)


def inertia(x: torch.Tensor, centers: torch.Tensor) -> float:
    """Sum of squared distances of the rows to their nearest centre (the k-means objective)."""
    return float(_assign(x, centers)[1].double().sum())


def kmeans_plus_plus(
    x: torch.Tensor, k: int, generator: torch.Generator, x_sq: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """Greedy k-means++ seeding (2 + log k candidates per centre, keep the one lowering the potential most).

    Returns the seeds and their inertia (the final potential, known for free).
    """
    n = x.shape[0]
    x_sq = x.pow(2).sum(1) if x_sq is None else x_sq
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    closest = squared_distances(x, x[first : first + 1], x_sq).squeeze(1)
    for _ in range(1, k):
        cumulative = closest.double().cumsum(0)
        targets = _uniform(generator, trials, x.device) * cumulative[-1]
        candidates = torch.searchsorted(cumulative, targets).clamp_max_(n - 1)
        candidate_closest = torch.minimum(closest.unsqueeze(1), squared_distances(x, x[candidates], x_sq))
        best = int(candidate_closest.double().sum(0).argmin())
        chosen.append(int(candidates[best]))
        closest = candidate_closest[:, best]
    return x[torch.tensor(chosen, device=x.device)].clone(), float(closest.double().sum())


def _cluster_sums(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums and counts through a one-hot matmul (deterministic on GPU, unlike index_add_)."""
    one_hot = torch.nn.functional.one_hot(labels, k).to(x.dtype)
    return one_hot.T @ x, one_hot.sum(0)


@dataclass
class KMeansResult:
    centers: torch.Tensor
    inertia: float
    seeding_inertia: float


def minibatch_step(
    centers: torch.Tensor, counts: torch.Tensor, batch: torch.Tensor, batch_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """One mini-batch k-means step in place (per-centre learning rate 1/count); returns the updated counts."""
    k = centers.shape[0]
    labels = squared_distances(batch, centers, batch_sq).argmin(dim=1)
    sums, batch_counts = _cluster_sums(batch, labels, k)
    new_counts = counts + batch_counts
    moved = batch_counts > 0
    centers[moved] = (centers[moved] * counts[moved, None] + sums[moved]) / new_counts[moved, None]
    return new_counts


def lloyd_refine(
    x: torch.Tensor, centers: torch.Tensor, x_sq: torch.Tensor, iterations: int, tolerance: float = 1e-3
) -> tuple[torch.Tensor, float]:
    """Full Lloyd passes from ``centers`` until one lowers the objective by less than ``tolerance`` (relative);
    returns the centres and their objective on ``x``."""
    centers = centers.clone()
    previous = math.inf
    for _ in range(iterations):
        labels, dists = _assign(x, centers, x_sq)
        objective = float(dists.double().sum())  # of the current centres
        if previous - objective <= tolerance * objective:
            return centers, objective
        previous = objective
        sums, cluster_counts = _cluster_sums(x, labels, centers.shape[0])
        filled = cluster_counts > 0  # an empty cluster keeps its centre
        centers[filled] = sums[filled] / cluster_counts[filled, None]
    return centers, float(_assign(x, centers, x_sq)[1].double().sum())


def minibatch_kmeans(
    x: torch.Tensor,
    k: int,
    generator: torch.Generator,
    iterations: int = 50,
    batch_size: int = 1024,
    refine_iterations: int = 20,
    tolerance: float = 1e-3,
) -> KMeansResult:
    """Mini-batch k-means (per-centre learning rate 1/count) from k-means++ seeds, then Lloyd refinement.

    The Lloyd passes stop early once a pass lowers the objective by less than ``tolerance`` (relative).
    Lloyd passes never raise the objective; mini-batch steps can, so the result is never allowed to be worse
    than the seeding it started from.
    """
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points, got {x.shape[0]}")
    x_sq = x.pow(2).sum(1)
    seeds, seeded = kmeans_plus_plus(x, k, generator, x_sq)
    centers = seeds.clone()
    counts = torch.zeros(k, dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        index = torch.randint(x.shape[0], (min(batch_size, x.shape[0]),), generator=generator).to(x.device)
        counts = minibatch_step(centers, counts, x[index], x_sq[index])
    centers, final = lloyd_refine(x, centers, x_sq, refine_iterations, tolerance)
    if seeded < final:
        return KMeansResult(seeds, seeded, seeded)
    return KMeansResult(centers, final, seeded)


class StreamingKMeans:
    """Mini-batch k-means fed during the frozen pass, so clustering overlaps the forward instead of following it.

    Seeds (greedy k-means++) come from the first ``seed_rows`` streamed tokens of the insertion point; every later
    batch then gives ``steps_per_batch`` mini-batch steps on ``batch_size`` of its own tokens. On an accelerator
    these kernels are queued behind the batch's forward and run while the host prepares the next batch. What is
    left after the pass is a short Lloyd refinement over the reservoir (``finish``).
    """

    def __init__(
        self, k: int, generator: torch.Generator, steps_per_batch: int, batch_size: int, seed_rows: int
    ) -> None:
        self.k, self.generator = k, generator
        self.steps_per_batch, self.batch_size, self.seed_rows = steps_per_batch, batch_size, seed_rows
        self.pending: list[torch.Tensor] = []
        self.seeds: torch.Tensor | None = None
        self.centers: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        if self.centers is None:
            self.pending.append(rows)
            if sum(p.shape[0] for p in self.pending) < max(self.k, self.seed_rows):
                return
            rows = torch.cat(self.pending)
            self.pending = []
            pool = rows[: max(self.k, self.seed_rows)]
            self.seeds = kmeans_plus_plus(pool, self.k, self.generator)[0]
            self.centers = self.seeds.clone()
            self.counts = torch.zeros(self.k, dtype=rows.dtype, device=rows.device)
        size = min(self.batch_size, rows.shape[0])
        for _ in range(self.steps_per_batch):
            # a window of the batch at a random offset: the batch is already a sample of the stream, and a slice
            # needs no gather (the gather cost more than the step's arithmetic)
            start = int(torch.randint(rows.shape[0] - size + 1, (1,), generator=self.generator))
            self.counts = minibatch_step(self.centers, self.counts, rows[start : start + size])

    def finish(self, reservoir: torch.Tensor, refine_iterations: int, tolerance: float = 1e-3) -> KMeansResult:
        """Lloyd refinement over the reservoir; never worse than the seeding (as ``minibatch_kmeans``)."""
        x_sq = reservoir.pow(2).sum(1)
        if self.centers is None:  # the whole stream was shorter than seed_rows: cluster the reservoir itself
            self.seeds = kmeans_plus_plus(reservoir, self.k, self.generator, x_sq)[0]
            self.centers = self.seeds.clone()
        centers, final = lloyd_refine(reservoir, self.centers, x_sq, refine_iterations, tolerance)
        seeded = float(_assign(reservoir, self.seeds, x_sq)[1].double().sum())
        if seeded < final:
            return KMeansResult(self.seeds, seeded, seeded)
        return KMeansResult(centers, final, seeded)


class TokenReservoir:
    """A uniform sample of at most ``capacity`` rows of a stream (Vitter's Algorithm R), vectorised per batch."""

    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        self.capacity = capacity
        self.generator = generator
        self.seen = 0
        self.buffer: torch.Tensor | None = None
        self.filled = 0

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.detach()
        if self.buffer is None:
            self.buffer = rows.new_empty(self.capacity, rows.shape[1])
        free = min(self.capacity - self.filled, rows.shape[0])
        if free:
            self.buffer[self.filled : self.filled + free] = rows[:free]
            self.filled += free
            self.seen += free
            rows = rows[free:]
        if rows.shape[0] == 0:
            return
        # Row t (0-based over the stream) replaces slot j ~ U{0..t} when j < capacity; the last writer wins.
        positions = torch.arange(self.seen, self.seen + rows.shape[0], dtype=torch.float64)
        slots = (
            torch.rand(rows.shape[0], generator=self.generator, dtype=torch.float64) * (positions + 1)
        ).long()
        self.seen += rows.shape[0]
        accepted = slots < self.capacity
        if not accepted.any():
            return
        winner = torch.full((self.capacity,), -1, dtype=torch.long)
        winner.scatter_reduce_(0, slots[accepted], torch.nonzero(accepted).squeeze(1), reduce="amax")
        target = torch.nonzero(winner >= 0).squeeze(1)
        self.buffer[target.to(self.buffer.device)] = rows[winner[target].to(rows.device)]

    def tokens(self) -> torch.Tensor:
        if self.buffer is None:
            raise ValueError("the reservoir received no tokens")
        return self.buffer[: self.filled]


def pool_prototypes(tokens: torch.Tensor, num_prompts: int, mode: str) -> torch.Tensor:
    """Pool [n, d] tokens in order with non-overlapping windows of floor(n / num_prompts): [num_prompts, d]."""
    window = tokens.shape[0] // num_prompts
    if window < 1:
        raise ValueError(f"{tokens.shape[0]} tokens cannot be pooled into {num_prompts} prompts")
    windows = tokens[: window * num_prompts].reshape(num_prompts, window, tokens.shape[1])
    return windows.mean(dim=1) if mode == "mean_pool" else windows.amax(dim=1)


@dataclass
class InitReport:
    """What an initialisation did: tokens streamed and kept per insertion point, k-means objective if any."""

    strategy: str
    tokens_seen: int
    tokens_kept: int
    batches: int
    inertia: list[float] | None = None
    seeding_inertia: list[float] | None = None


@torch.no_grad()
def prototype_prompts(
    visual: VisionTower,
    batches: Iterable[torch.Tensor],
    num_batches: int,
    *,
    num_prompts: int,
    depth: int,
    strategy: str,
    token_budget: int,
    seed: int,
    device: torch.device | str = "cpu",
    kmeans_iterations: int = 50,
    kmeans_batch_size: int = 1024,
    kmeans_refine: int = 20,
) -> tuple[torch.Tensor, InitReport]:
    """Prototype prompts [depth, num_prompts, width] from one frozen pass over ``batches`` of images.

    Insertion point l is the input of block l of the prompt-free backbone (l = 0: the patch-embedding output,
    the shallow insertion point); only patch tokens count, never the prefix tokens.
    """
    if strategy not in INITIALIZERS:
        raise ValueError(f"unknown initialiser {strategy!r}; choose one of {INITIALIZERS}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    chosen_batch = int(torch.randint(max(num_batches, 1), (1,), generator=generator))
    reservoirs = [TokenReservoir(token_budget, generator) for _ in range(depth)]
    steps_per_batch = max(1, math.ceil(kmeans_iterations / max(num_batches, 1))) if kmeans_iterations else 0
    seed_rows = min(token_budget, 4 * kmeans_batch_size)
    streams = [
        StreamingKMeans(num_prompts, generator, steps_per_batch, kmeans_batch_size, seed_rows) for _ in range(depth)
    ]
    picked: list[torch.Tensor] = []
    seen = batches_done = 0
    num_prefix = visual.num_prefix_tokens
    for batch_index, images in enumerate(batches):
        tokens = visual.embed(images.to(device))
        per_layer = []
        for layer in range(depth):
            per_layer.append(tokens[:, num_prefix:].reshape(-1, tokens.shape[-1]))
            if layer + 1 < depth:
                tokens = visual.block(layer, tokens)
        seen += per_layer[0].shape[0]
        batches_done += 1
        if strategy == "kmeans":
            for reservoir, stream, rows in zip(reservoirs, streams, per_layer):
                reservoir.add(rows.float())
                stream.add(rows.float())
        elif batch_index == chosen_batch:
            picked = [rows.float() for rows in per_layer]
            break  # the pooling and sampling strategies need only the one random batch
    if strategy == "kmeans":
        kept = reservoirs[0].filled
    else:
        kept = min(picked[0].shape[0], token_budget) if picked else 0
    if kept < num_prompts:
        raise ConfigError(
            f"SPT '{strategy}' initialisation found only {kept} patch tokens to build {num_prompts} prompts from "
            f"({batches_done} batches of training images). Lower num_tokens, or raise init_batch_size and "
            "token_budget, or use more training images."
        )
    prototypes, inertias, seedings = [], [], []
    for layer in range(depth):
        if strategy == "kmeans":
            result = streams[layer].finish(reservoirs[layer].tokens(), kmeans_refine)
            prototypes.append(result.centers)
            inertias.append(result.inertia)
            seedings.append(result.seeding_inertia)
            continue
        rows = picked[layer]
        if rows.shape[0] > token_budget:  # keep the budget: a uniform subsample, in order
            keep = torch.randperm(rows.shape[0], generator=generator)[:token_budget].sort().values
            rows = rows[keep.to(rows.device)]
        if strategy == "random_sample":
            index = torch.randperm(rows.shape[0], generator=generator)[:num_prompts]
            prototypes.append(rows[index.to(rows.device)])
        else:
            prototypes.append(pool_prototypes(rows, num_prompts, strategy))
    report = InitReport(strategy, seen, kept, batches_done, inertias or None, seedings or None)
    log.info("SPT %s init: %d tokens streamed, %d kept per insertion point", strategy, seen, kept)
    return torch.stack(prototypes), report
