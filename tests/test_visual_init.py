"""SPT initialisers: shapes, determinism, the k-means objective, bounded streaming, bad input."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_visual import tiny_backbone  # pytest puts tests/ on sys.path

import vlprompt.methods.spt  # noqa: F401
from vlprompt.analysis.nmi import NMICallback, method_nmi, nmi_record
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import ImageDataset, LabelSpace, TaskData
from vlprompt.data.transforms import eval_transform
from vlprompt.methods.base import create_method
from vlprompt.prompts.init import INITIALIZERS, pool_prototypes
from vlprompt.prompts.kmeans import (
    StreamingKMeans,
    TokenReservoir,
    inertia,
    kmeans_plus_plus,
    minibatch_kmeans,
)
from vlprompt.train import TrainConfig, Trainer

LABELS = LabelSpace(["a", "b"])


def image_dataset(n: int = 10, seed: int = 0) -> ImageDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=generator)
    return ImageDataset(list(range(n)), [i % 2 for i in range(n)], load=lambda i: images[i])


@pytest.mark.parametrize("init", INITIALIZERS)
@pytest.mark.parametrize("name,depth", [("spt-shallow", 1), ("spt-deep", 2)])
def test_initialisers_shapes_and_determinism(init, name, depth):
    dataset = image_dataset()
    values = []
    for seed in (3, 3, 4):
        method = create_method(name, tiny_backbone(), LABELS, num_tokens=4, init=init, init_batch_size=4)
        report = method.initialize_prompts(dataset, seed=seed)
        values.append(method.prompts.tokens.detach().clone())
        assert report.tokens_kept <= method.config.token_budget
    assert values[0].shape == (depth, 4, 32)
    assert torch.equal(values[0], values[1])
    if init in ("kmeans", "random_sample"):  # pooling's only draw is which batch, which two seeds may share
        assert not torch.equal(values[0], values[2])


def test_prototypes_come_from_the_data_tokens():
    backbone = tiny_backbone()
    dataset = image_dataset(n=4)
    images = torch.stack([dataset[i][0] for i in range(4)])
    with torch.no_grad():
        patches = backbone.visual.embed(images)[:, 1:].reshape(-1, 32)  # 4 images x 16 patches, one batch
    method = create_method(
        "spt-shallow", backbone, LABELS, num_tokens=4, init="random_sample", init_batch_size=4
    )
    method.initialize_prompts(dataset, seed=0)
    for prompt in method.prompts.tokens[0]:
        assert (patches - prompt).abs().amax(dim=1).min() < 1e-6
    for mode in ("mean_pool", "max_pool"):
        method = create_method("spt-shallow", backbone, LABELS, num_tokens=4, init=mode, init_batch_size=4)
        method.initialize_prompts(dataset, seed=0)
        torch.testing.assert_close(method.prompts.tokens[0], pool_prototypes(patches, 4, mode))
    windows = patches.reshape(4, 16, 32)
    torch.testing.assert_close(pool_prototypes(patches, 4, "mean_pool"), windows.mean(1))


def test_kmeans_not_worse_than_its_seeding_and_deterministic():
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 8, generator=generator) * 4
    x = centers[torch.randint(6, (3000,), generator=generator)] + torch.randn(3000, 8, generator=generator)
    seeds, potential = kmeans_plus_plus(x, 6, torch.Generator().manual_seed(1))
    assert potential == pytest.approx(inertia(x, seeds), rel=1e-5)
    result = minibatch_kmeans(x, 6, torch.Generator().manual_seed(1), iterations=30, batch_size=256)
    assert result.seeding_inertia == pytest.approx(inertia(x, seeds))
    assert result.inertia <= result.seeding_inertia
    again = minibatch_kmeans(x, 6, torch.Generator().manual_seed(1), iterations=30, batch_size=256)
    assert torch.equal(result.centers, again.centers)
    # well-separated blobs: close to the true objective (one unit variance per dimension)
    assert result.inertia / (3000 * 8) < 1.2


def test_streaming_kmeans_during_the_pass_matches_kmeans_after_it():
    """Seeds from the first streamed tokens and mini-batch steps per batch, then Lloyd over the kept tokens: as
    good as clustering the same tokens after the pass (blobs: both near the true objective), never worse than
    its seeding, and deterministic."""
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 8, generator=generator) * 4
    x = centers[torch.randint(6, (3000,), generator=generator)] + torch.randn(3000, 8, generator=generator)

    def streamed() -> tuple:
        stream = StreamingKMeans(6, torch.Generator().manual_seed(1), steps_per_batch=2, batch_size=128, seed_rows=500)
        for start in range(0, 3000, 256):
            stream.add(x[start : start + 256])
            if start >= 512:
                assert stream.centers is not None  # clustering runs during the pass, not after it
        return stream, stream.finish(x, refine_iterations=20)

    stream, result = streamed()
    after = minibatch_kmeans(x, 6, torch.Generator().manual_seed(1), iterations=30, batch_size=256)
    assert result.inertia <= result.seeding_inertia
    assert result.seeding_inertia == pytest.approx(inertia(x, stream.seeds), rel=1e-5)
    assert result.inertia <= 1.01 * after.inertia
    assert result.inertia / (3000 * 8) < 1.2
    assert torch.equal(result.centers, streamed()[1].centers)


def test_kmeans_report_on_a_model():
    method = create_method(
        "spt-deep", tiny_backbone(), LABELS, num_tokens=3, token_budget=100, init_batch_size=4
    )
    report = method.initialize_prompts(image_dataset(n=20), seed=0)
    assert report.tokens_seen == 20 * 16 and report.tokens_kept == 100 and report.batches == 5
    assert len(report.inertia) == 2
    assert all(a <= b for a, b in zip(report.inertia, report.seeding_inertia))


def test_reservoir_is_bounded_and_uniform():
    hits = torch.zeros(1000)
    for seed in range(200):
        reservoir = TokenReservoir(100, torch.Generator().manual_seed(seed))
        for start in range(0, 1000, 64):  # batches of 64 rows, the last one short
            reservoir.add(torch.arange(start, min(start + 64, 1000), dtype=torch.float32).unsqueeze(1))
        kept = reservoir.tokens().squeeze(1).long()
        assert kept.shape == (100,) and kept.unique().numel() == 100
        hits[kept] += 1
    rate = hits / 200  # every row should be kept with probability 100/1000
    assert abs(rate[:100].mean() - 0.1) < 0.02 and abs(rate[-100:].mean() - 0.1) < 0.02


def test_setup_initialises_before_training_and_nmi_sees_the_initialised_prompts():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (10, 32, 32, 3), generator=generator, dtype=torch.uint8)
    pictures = ImageDataset(list(range(10)), [i % 2 for i in range(10)],
                            load=lambda i: Image.fromarray(pixels[i].numpy()))
    method = create_method("spt-shallow", tiny_backbone(), LABELS, num_tokens=2, init_batch_size=4)
    before = method.prompts.tokens.detach().clone()
    config = TrainConfig(epochs=0, progress=False, device="cpu", num_workers=0)
    trainer = Trainer(method, config, callbacks=[NMICallback(every=1, images=3)])
    history = trainer.fit(TaskData("t", LABELS, pictures, pictures)).history
    assert not torch.equal(before, method.prompts.tokens)  # setup initialised the prompts
    # The callback's step-0 record comes after setup: it measures the initialised prompts.
    probe = pictures.with_transform(eval_transform(method.backbone.preprocess))
    expected = nmi_record(method_nmi(method, torch.stack([probe[i][0] for i in range(3)])))
    assert history == [{"step": 0, "epoch": 0, **expected}]


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"init": "kmedoids"}, "init"),
        ({"projection_dim": 8}, "projection_dim"),
        ({"num_tokens": 10, "token_budget": 5}, "token_budget"),
        ({"num_tokens": 0}, "num_tokens"),
        ({"init_batch_size": 0}, "init_batch_size"),
    ],
)
def test_spt_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        create_method("spt-deep", tiny_backbone(), LABELS, **overrides)


def test_too_few_tokens_for_the_prompts_is_explained():
    method = create_method(
        "spt-shallow", tiny_backbone(), LABELS, num_tokens=20, init="random_sample", init_batch_size=1
    )
    with pytest.raises(ConfigError, match="num_tokens"):
        method.initialize_prompts(image_dataset(n=2), seed=0)
