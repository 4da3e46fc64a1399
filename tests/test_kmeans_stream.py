"""The streamed SPT k-means: rows gathered from token views equal the flattened rows, streaming views is bit for
bit streaming rows, prototypes are the means of their tokens, and the Lloyd tail's flop cap."""

from __future__ import annotations

import pytest
import torch
from test_visual import tiny_backbone  # pytest puts tests/ on sys.path

import vlprompt.methods.spt  # noqa: F401
from vlprompt.data.base import ImageDataset, LabelSpace
from vlprompt.methods.base import create_method
from vlprompt.prompts.init import refine_passes
from vlprompt.prompts.kmeans import StreamingKMeans, TokenReservoir, TokenRows, inertia, squared_distances


def test_token_rows_equal_the_flattened_rows():
    tokens = torch.randn(5, 7, 4, generator=torch.Generator().manual_seed(0))
    view = tokens[:, 1:]  # the prefix sliced off: not contiguous, as the pass hands it over
    flat = view.reshape(-1, 4)
    rows = TokenRows(view)
    assert rows.count == 30
    for start, stop in [(0, 30), (0, 1), (5, 6), (4, 13), (11, 29), (29, 30)]:
        assert torch.equal(rows.span(start, stop), flat[start:stop])
    index = torch.tensor([29, 0, 6, 5, 17, 17])
    assert torch.equal(rows.take(index), flat[index])


def _stream(batches: list[torch.Tensor], as_views: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    reservoir = TokenReservoir(70, generator)
    stream = StreamingKMeans(4, generator, steps_per_batch=2, batch_size=16, seed_rows=40)
    for batch in batches:
        patches = batch[:, 1:]
        rows = TokenRows(patches) if as_views else patches.reshape(-1, patches.shape[-1])
        reservoir.add(rows)
        stream.add(rows)
    return reservoir.tokens().clone(), stream.finish(reservoir.tokens(), refine_iterations=5).centers


def test_streaming_token_views_is_bit_identical_to_streaming_flat_rows():
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(6, 9, 5, generator=generator) for _ in range(5)]  # 5 x 48 patch rows, budget 70
    kept_views, centers_views = _stream(batches, as_views=True)
    kept_rows, centers_rows = _stream(batches, as_views=False)
    assert kept_views.shape == (70, 5)
    assert torch.equal(kept_views, kept_rows)
    assert torch.equal(centers_views, centers_rows)


def test_streamed_prototypes_are_the_means_of_their_tokens():
    """After the Lloyd tail has converged (separated blobs), each prototype is exactly the mean of the kept
    tokens nearest to it, and every prototype has tokens."""
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 8, generator=generator) * 6
    x = centers[torch.randint(5, (2000,), generator=generator)] + torch.randn(2000, 8, generator=generator)
    stream = StreamingKMeans(5, torch.Generator().manual_seed(2), steps_per_batch=2, batch_size=128, seed_rows=400)
    for start in range(0, 2000, 250):
        stream.add(x[start : start + 250])
    result = stream.finish(x, refine_iterations=50)
    labels = squared_distances(x, result.centers).argmin(dim=1)
    assert labels.unique().numel() == 5
    means = torch.stack([x[labels == j].mean(dim=0) for j in range(5)])
    torch.testing.assert_close(result.centers, means, rtol=0, atol=1e-5)
    assert result.inertia == pytest.approx(inertia(x, result.centers), rel=1e-6)


def test_model_prototypes_are_scored_on_the_tokens_entering_each_block():
    """With a budget above the set's token count the reservoir holds every patch token of insertion point l (the
    input of block l, prefix dropped); the reported objective is that of the prototypes on exactly those tokens,
    and two runs agree bit for bit."""
    backbone = tiny_backbone()
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dataset = ImageDataset(list(range(12)), [i % 2 for i in range(12)], load=lambda i: images[i])
    labels = LabelSpace(["a", "b"])
    runs = []
    for _ in range(2):
        method = create_method("spt-deep", backbone, labels, num_tokens=3, token_budget=1000, init_batch_size=5)
        report = method.initialize_prompts(dataset, seed=7)
        runs.append(method.prompts.tokens.detach().clone())
    assert report.tokens_seen == report.tokens_kept == 12 * 16
    assert torch.equal(runs[0], runs[1])
    with torch.no_grad():
        tokens = backbone.visual.embed(images)
        for layer in range(2):
            patches = tokens[:, 1:].reshape(-1, tokens.shape[-1])
            assert report.inertia[layer] == pytest.approx(inertia(patches, runs[0][layer]), rel=1e-5)
            assert report.inertia[layer] <= report.seeding_inertia[layer]
            tokens = backbone.visual.block(layer, tokens)


@pytest.mark.parametrize(
    "args,passes",
    [
        ((20, 200_704, 65_536, 20_000, 10, 16), 20),  # 1,024 images of 224 px, k = 10: the limit binds
        ((20, 200_704, 65_536, 20_000, 100, 16), 4),  # k = 100: 0.1 x 200,704 x 768 / 100 - 65,536 visits
        ((20, 192, 0, 192, 3, 8), 6),  # a tiny set whole in the reservoir
        ((20, 10, 0, 10, 100, 16), 1),  # never fewer than one pass
        ((0, 200_704, 0, 20_000, 10, 16), 0),  # refinement switched off
    ],
)
def test_lloyd_tail_passes_are_paid_for_by_the_streamed_tokens(args, passes):
    assert refine_passes(*args) == passes
