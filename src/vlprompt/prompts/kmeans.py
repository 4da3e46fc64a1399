"""k-means for the SPT prototypes, fed by the frozen pass itself: a bounded token reservoir and mini-batch steps.

The pass hands over each insertion point's patch tokens as a [B, P, d] view (the prefix tokens sliced off, so not
contiguous). Flattening that view copies the whole batch, and at 224 px those copies (and the fresh pages they
touch) cost more than every clustering step together; so ``TokenRows`` gathers only the rows a reservoir slot or
a mini-batch window needs. Every random draw comes from one seeded CPU generator, so a run is reproducible bit for
bit on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_CHUNK = 65536  # rows per distance computation, bounding the [n, k] distance matrix


class TokenRows:
    """Rows of a [B, P, d] token view in image-major order (row r = image r // P, patch r % P), gathered on demand."""

    def __init__(self, tokens: torch.Tensor) -> None:
        if tokens.dim() == 2:  # plain [n, d] rows
            tokens = tokens.unsqueeze(1)
        self.tokens = tokens.detach()
        self.per_image = tokens.shape[1]
        self.count = tokens.shape[0] * tokens.shape[1]

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The rows at ``index`` (flat, image-major) as a fresh float32 [len(index), d] tensor."""
        index = index.to(self.tokens.device)
        return self.tokens[index // self.per_image, index % self.per_image].float()

    def span(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` as float32 [stop - start, d]: a copy of just the images they lie in (a strided
        copy, far cheaper than a gather), or a view when the rows are already plain [n, d] rows."""
        first, last = start // self.per_image, -(-stop // self.per_image)
        block = self.tokens[first:last].reshape(-1, self.tokens.shape[-1])
        offset = first * self.per_image
        return block[start - offset : stop - offset].float()


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


def cluster_sums(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums and counts. On CPU index_add_ adds the rows in order (deterministic, one add per value);
    on an accelerator its atomics are not, so there the sums are a one-hot matmul (k times the arithmetic, and
    deterministic)."""
    if x.device.type == "cpu":
        counts = torch.zeros(k, dtype=x.dtype).index_add_(0, labels, torch.ones_like(labels, dtype=x.dtype))
        return torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, labels, x), counts
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
    sums, batch_counts = cluster_sums(batch, labels, k)
    new_counts = counts + batch_counts
    moved = batch_counts > 0
    centers[moved] = (centers[moved] * counts[moved, None] + sums[moved]) / new_counts[moved, None]
    return new_counts


def lloyd_refine(
    x: torch.Tensor, centers: torch.Tensor, x_sq: torch.Tensor, iterations: int, tolerance: float = 1e-3
) -> tuple[torch.Tensor, float]:
    """Full Lloyd passes from ``centers`` until one lowers the objective by less than ``tolerance`` (relative);
    returns the centres and their objective on ``x``. Each pass's assignment also scores the centres it started
    from, so the objective of the returned centres costs one more assignment only when the passes run out."""
    centers = centers.clone()
    previous = math.inf
    for _ in range(iterations):
        labels, dists = _assign(x, centers, x_sq)
        objective = float(dists.double().sum())  # of the current centres
        if previous - objective <= tolerance * objective:
            return centers, objective
        previous = objective
        sums, counts = cluster_sums(x, labels, centers.shape[0])
        filled = counts > 0  # an empty cluster keeps its centre
        centers[filled] = sums[filled] / counts[filled, None]
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
    """Mini-batch k-means (per-centre learning rate 1/count) from k-means++ seeds, then Lloyd refinement, over
    rows already in memory: the reference the streamed clustering is compared with.

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
    batch then gives ``steps_per_batch`` mini-batch steps on a window of ``batch_size`` of its own tokens (the
    batch is already a sample of the stream). On an accelerator these kernels are queued behind the batch's forward
    and run while the host prepares the next batch. What is left after the pass is a short Lloyd refinement over
    the reservoir (``finish``).
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
        self.visits = 0  # rows assigned by the mini-batch steps so far

    def add(self, rows: TokenRows | torch.Tensor) -> None:
        rows = rows if isinstance(rows, TokenRows) else TokenRows(rows)
        if self.centers is None:
            need = max(self.k, self.seed_rows)
            have = sum(p.shape[0] for p in self.pending)
            self.pending.append(rows.span(0, min(rows.count, need - have)))  # only the rows seeding uses
            if have + self.pending[-1].shape[0] < need:
                return
            pool = torch.cat(self.pending)
            self.pending = []
            self.seeds = kmeans_plus_plus(pool, self.k, self.generator)[0]
            self.centers = self.seeds.clone()
            self.counts = torch.zeros(self.k, dtype=pool.dtype, device=pool.device)
        size = min(self.batch_size, rows.count)
        for _ in range(self.steps_per_batch):
            start = int(torch.randint(rows.count - size + 1, (1,), generator=self.generator))
            self.counts = minibatch_step(self.centers, self.counts, rows.span(start, start + size))
            self.visits += size

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

    def add(self, rows: TokenRows | torch.Tensor) -> None:
        rows = rows if isinstance(rows, TokenRows) else TokenRows(rows)
        if self.buffer is None:
            self.buffer = torch.empty(
                self.capacity, rows.tokens.shape[-1], dtype=torch.float32, device=rows.tokens.device
            )
        free = min(self.capacity - self.filled, rows.count)
        if free:
            self.buffer[self.filled : self.filled + free] = rows.span(0, free)
            self.filled += free
            self.seen += free
        rest = rows.count - free
        if rest == 0:
            return
        # Row t (0-based over the stream) replaces slot j ~ U{0..t} when j < capacity; the last writer wins.
        positions = torch.arange(self.seen, self.seen + rest, dtype=torch.float64)
        slots = (torch.rand(rest, generator=self.generator, dtype=torch.float64) * (positions + 1)).long()
        self.seen += rest
        accepted = slots < self.capacity
        if not accepted.any():
            return
        winner = torch.full((self.capacity,), -1, dtype=torch.long)
        winner.scatter_reduce_(0, slots[accepted], torch.nonzero(accepted).squeeze(1), reduce="amax")
        target = torch.nonzero(winner >= 0).squeeze(1)
        self.buffer[target.to(self.buffer.device)] = rows.take(winner[target] + free)

    def tokens(self) -> torch.Tensor:
        if self.buffer is None:
            raise ValueError("the reservoir received no tokens")
        return self.buffer[: self.filled]
