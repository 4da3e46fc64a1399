"""Prompt initialisers from the downstream data's own tokens (SPT), in one bounded-memory frozen pass.

What the official code does (WangYZ1608/Self-Prompt-Tuning, train.py / train_MAE.py ``prompt_generator``, read
for this): prompt set l starts from tokens of the prompt-free pretrained model at insertion point l, caught by
forward hooks: l = 0 is the ``patch_embed`` output (before the position embedding and the class token), l >= 1
is block l-1's output without the class token, i.e. the input of block l. Its k-means centres are not computed
by the released code: they are read from ``kmeans-prompt/0.3/depth_{l}.txt``, made by an unreleased script (the
"0.3" suggests a 30 % sample); the released code offers k-means only for the deep variant (its shallow branch
samples random tokens whatever the strategy), with 20 prompts deep / 100 shallow in its scripts.

What we do: the same insertion points for l >= 1, but l = 0 is our adapters' ``embed`` output, i.e. AFTER the
position embedding (no adapter exposes the pre-position patch tokens yet): a difference for the shallow prompts
and the first deep set. k-means is ours (the official one is not published): each insertion point keeps a
uniform reservoir of at most ``token_budget`` streamed tokens (prompts/kmeans.py), k-means++ seeds from the first
streamed tokens, mini-batch steps run on each batch's tokens as it arrives (so the clustering overlaps the
pass), and after the pass a Lloyd tail over the reservoir takes only the passes the streamed tokens pay for
(``refine_passes``). The pooling and sampling strategies use one random batch (the official code uses the whole
training set in one forward). All on the tokens' device, every random draw from one seeded CPU generator.
benchmarks/bench_visual_init.py --b16 measures the cost against the bare frozen pass at ViT-B/16 shape.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from vlprompt.backbones.base import VisionTower
from vlprompt.core.errors import ConfigError
from vlprompt.prompts.kmeans import StreamingKMeans, TokenReservoir, TokenRows

log = logging.getLogger(__name__)

INITIALIZERS = ("kmeans", "mean_pool", "max_pool", "random_sample")


def pool_prototypes(tokens: torch.Tensor, num_prompts: int, mode: str) -> torch.Tensor:
    """Pool [n, d] tokens in order with non-overlapping windows of floor(n / num_prompts): [num_prompts, d]."""
    window = tokens.shape[0] // num_prompts
    if window < 1:
        raise ValueError(f"{tokens.shape[0]} tokens cannot be pooled into {num_prompts} prompts")
    windows = tokens[: window * num_prompts].reshape(num_prompts, window, tokens.shape[1])
    return windows.mean(dim=1) if mode == "mean_pool" else windows.amax(dim=1)


# The clustering's arithmetic may be at most this share of the patch embedding's over the same tokens.
CLUSTERING_SHARE = 0.1


def refine_passes(
    limit: int, streamed: int, minibatch_visits: int, kept: int, num_prompts: int, patch_size: int
) -> int:
    """Lloyd passes over the ``kept`` reservoir rows after the pass: at most ``limit``, at least one, and no more
    than the clustering share of the pass pays for.

    One clustering visit (a row against k centres, its assignment and its add) costs about 2kd flops; embedding a
    streamed token costs 2d x 3 patch^2 flops, the least any pass does per token (the shallow pass is just that).
    So ``CLUSTERING_SHARE`` x streamed x 3 patch^2 / k visits are paid for, the mini-batch steps' visits first.
    Without this cap the Lloyd tail over a fixed budget is a fixed cost that a small set or a large k cannot pay
    for (k = 100, 1,024 images of 224 px: the clustering was 42 % of the shallow pass, mostly that tail). At
    k = 10 and patch 16 the cap allows ~7.7 visits per streamed token, so there ``limit`` binds.
    """
    if not limit:
        return 0
    allowed = CLUSTERING_SHARE * streamed * 3 * patch_size**2 / num_prompts - minibatch_visits
    return max(1, min(limit, int(allowed // max(kept, 1))))


@dataclass
class InitReport:
    """What an initialisation did: tokens streamed and kept per insertion point, k-means objective if any, and
    the time the clustering added to the pass."""

    strategy: str
    tokens_seen: int
    tokens_kept: int
    batches: int
    inertia: list[float] | None = None
    seeding_inertia: list[float] | None = None
    # Host seconds spent on the tokens beyond the frozen pass (reservoir, mini-batch steps, Lloyd tail), measured
    # inside the same run as the pass so that the share does not move with the machine's load; on an accelerator
    # it is the time to queue that work.
    clustering_s: float = 0.0


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
    clustering = 0.0  # host seconds spent on the tokens beyond the pass itself
    num_prefix = visual.num_prefix_tokens
    for batch_index, images in enumerate(batches):
        if strategy != "kmeans" and batch_index != chosen_batch:
            batches_done += 1
            continue  # the pooling and sampling strategies need only the one random batch
        tokens = visual.embed(images.to(device))
        seen += tokens.shape[0] * (tokens.shape[1] - num_prefix)
        batches_done += 1
        for layer in range(depth):
            patches = tokens[:, num_prefix:]  # a view: TokenRows gathers only the rows it keeps
            if strategy == "kmeans":
                started = time.perf_counter()
                rows = TokenRows(patches)
                reservoirs[layer].add(rows)
                streams[layer].add(rows)
                clustering += time.perf_counter() - started
            else:
                picked.append(patches.reshape(-1, patches.shape[-1]).float())
            if layer + 1 < depth:
                tokens = visual.block(layer, tokens)
        if strategy != "kmeans":
            break
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
            started = time.perf_counter()
            kept_tokens = reservoirs[layer].tokens()
            passes = refine_passes(
                kmeans_refine, seen, streams[layer].visits, kept_tokens.shape[0], num_prompts, visual.patch_size
            )
            result = streams[layer].finish(kept_tokens, passes)
            clustering += time.perf_counter() - started
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
    report = InitReport(strategy, seen, kept, batches_done, inertias or None, seedings or None, clustering)
    log.info("SPT %s init: %d tokens streamed, %d kept per insertion point", strategy, seen, kept)
    return torch.stack(prototypes), report
