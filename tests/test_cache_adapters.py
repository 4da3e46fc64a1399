"""Tip-Adapter(-F) and CLAP on the feature cache: hand-computed logits and penalties, α/β chosen on validation
(never test), cache keys from averaged views, checkpoints of the fitted cache model."""
from __future__ import annotations

import math

import pytest
import torch
from test_text_training import ToyLoader, toy_task, train_config

from vlprompt.artifacts.checkpoint import load_prompts, save_prompts
from vlprompt.backbones.tiny import tiny_open_clip
from vlprompt.data.base import ImageDataset, TaskData
from vlprompt.eval.tasks import evaluate
from vlprompt.losses import class_adaptive_penalty, class_confidence
from vlprompt.methods.base import create_method
from vlprompt.methods.tip_adapter import search_alpha_beta, search_grid, tip_logits
from vlprompt.train import Trainer


@pytest.fixture(scope="module")
def clip():
    return tiny_open_clip(seed=0)


def task_with_val(val_labels: list[int] | None = None, poisoned_test: bool = False) -> TaskData:
    base = toy_task(n_train=12, n_test=9)
    ids = range(2000, 2012)
    labels = val_labels or [i % 3 for i in ids]
    val = ImageDataset([f"toy/val/{i}" for i in ids], labels, ToyLoader(), name="toy:val")
    test = base.test
    if poisoned_test:
        def refuse(source):
            raise AssertionError(f"the test split was read during fitting ({source})")

        test = ImageDataset(list(base.test.sources), list(base.test.labels), refuse, name="toy:test-poisoned")
    return TaskData("toy", base.labels, base.train, test, val=val)


def views_config(**overrides):
    return train_config(augment="crop_flip", feature_views=3, **overrides)


def test_tip_logits_by_hand_on_three_classes():
    clip_logits = torch.tensor([[1.0, 2.0, 3.0]])
    affinity = torch.tensor([[1.0, 0.5]])  # cos with two cached keys, labelled 0 and 2
    values = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    # α = 2, β = 3: exp(-3·0) = 1 for key 0, exp(-3·0.5) for key 1
    expected = torch.tensor([[1 + 2 * 1.0, 2.0, 3 + 2 * math.exp(-1.5)]])
    torch.testing.assert_close(tip_logits(clip_logits, affinity, values, 2.0, 3.0), expected)


def test_official_search_grid():
    betas = search_grid(7.0, 200)  # ImageNet's search_scale[0], search_step[0]
    assert len(betas) == 200 and betas[0] == pytest.approx(0.1) and betas[1] == pytest.approx(0.1 + 6.9 / 200)
    assert betas[-1] == pytest.approx(0.1 + 199 * 6.9 / 200)


def test_search_keeps_the_first_best_in_official_order():
    clip_logits = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    affinity = torch.tensor([[1.0], [1.0]])
    values = torch.tensor([[1.0, 0.0]])
    labels = torch.tensor([0, 0])
    # the cache must outweigh the zero-shot margin of 1: α·exp(0) > 1 -> the first such α, for the first β
    alpha, beta, accuracy = search_alpha_beta(clip_logits, affinity, values, labels, [0.5, 1.5, 2.5], [1.0, 2.0])
    assert (alpha, beta, accuracy) == (1.5, 1.0, 1.0)


def test_cache_keys_are_the_normalised_mean_of_raw_views(clip):
    task = task_with_val()
    method = create_method("tip-adapter", clip, task.labels, search=False)
    trainer = Trainer(method, views_config())
    trainer.fit(task)
    views = trainer.cached_features(task.train, train=True)
    assert views.shape[0] == 3
    expected = torch.nn.functional.normalize(views.mean(0), dim=-1)
    torch.testing.assert_close(method.cache_keys.data, expected)
    per_view_normalised = torch.nn.functional.normalize(
        torch.nn.functional.normalize(views, dim=-1).mean(0), dim=-1)
    assert not torch.allclose(method.cache_keys.data, per_view_normalised)
    assert torch.equal(method.cache_values.data.argmax(1), torch.tensor(task.train.labels))


def test_forward_equals_the_definition(clip):
    task = task_with_val()
    method = create_method("tip-adapter", clip, task.labels, init_alpha=2.0, init_beta=5.0)
    keys = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    method.set_cache(keys, torch.tensor([0, 1, 2, 2]))
    features = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = method({"features": features})["logits"].double()
    f = torch.nn.functional.normalize(features.double(), dim=-1)
    k = torch.nn.functional.normalize(keys.double(), dim=-1)
    w = method.hand_features().double()
    scale = method.logit_scale
    for b in range(2):
        for c in range(3):
            cache = sum(math.exp(-5.0 * (1 - float(f[b] @ k[n]))) for n, label in enumerate([0, 1, 2, 2]) if label == c)
            assert float(logits[b, c]) == pytest.approx(scale * float(f[b] @ w[c]) + 2.0 * cache, rel=1e-5)


def test_alpha_beta_are_chosen_on_validation_never_test(clip):
    # validation labels rotated by one: the cache (built from correctly labelled training images) misleads on it,
    # so the best (α, β) on validation differs from the best on test. The test split raises if it is read.
    rotated = [(i + 1) % 3 for i in range(2000, 2012)]
    task = task_with_val(val_labels=rotated, poisoned_test=True)
    config = {"search_steps_alpha": 8, "search_steps_beta": 10, "search_scale_alpha": 10.0, "search_scale_beta": 10.0}
    method = create_method("tip-adapter", clip, task.labels, **config)
    trainer = Trainer(method, views_config())
    trainer.fit(task)
    chosen = (float(method.alpha), float(method.beta))

    def best_on(dataset):
        features = trainer.cached_features(dataset)
        clip_logits, affinity = method.logit_parts(features)
        labels = torch.tensor(dataset.labels)
        alpha, beta, _ = search_alpha_beta(clip_logits, affinity, method.cache_values, labels,
                                           search_grid(10.0, 8), search_grid(10.0, 10))
        return alpha, beta

    assert chosen == pytest.approx(best_on(task.val))
    clean_test = toy_task(n_train=12, n_test=9).test
    assert chosen != pytest.approx(best_on(clean_test))


def test_tip_adapter_f_trains_the_keys_then_searches_and_round_trips(clip, tmp_path):
    task = task_with_val()
    method = create_method("tip-adapter-f", clip, task.labels, search_steps_alpha=5, search_steps_beta=5)
    trainer = Trainer(method, views_config(epochs=2, optimizer="adamw", lr=0.01, adam_eps=1e-4), out_dir=tmp_path)
    trainer.fit(task)
    views = trainer.cached_features(task.train, train=True)
    initial = torch.nn.functional.normalize(views.mean(0), dim=-1)
    assert not torch.allclose(method.cache_keys.data, initial)  # the keys moved
    assert "tip_alpha" in trainer.history[-1]  # searched after training
    fresh = create_method("tip-adapter-f", clip, task.labels, search_steps_alpha=5, search_steps_beta=5)
    load_prompts(fresh, tmp_path)
    for name in ("cache_keys", "cache_values", "alpha", "beta"):
        assert torch.equal(getattr(fresh, name).data, getattr(method, name).data)
    assert evaluate(fresh, task.test, batch_size=4) == evaluate(method, task.test, batch_size=4)


def test_training_free_tip_adapter_saves_its_cache_model(clip, tmp_path):
    task = task_with_val()
    method = create_method("tip-adapter", clip, task.labels, search_steps_alpha=4, search_steps_beta=4)
    result = Trainer(method, views_config(), out_dir=tmp_path).fit(task)
    assert result.steps == 0 and (tmp_path / "prompts.safetensors").exists()
    path = save_prompts(method, tmp_path / "again.safetensors")
    fresh = create_method("tip-adapter", clip, task.labels)
    load_prompts(fresh, path)
    assert float(fresh.beta) == float(method.beta) and fresh.cache_keys.shape == method.cache_keys.shape


def test_clap_penalty_and_multipliers_by_hand():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    anchors = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    # distances ‖w_c − t_c‖² = 1 and 1; mean(0.5·1, 1.0·1) = 0.75
    assert float(class_adaptive_penalty(prototypes, anchors, torch.tensor([0.5, 1.0]))) == pytest.approx(0.75)
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # class 0: mean(p0) over its two samples = (0.5 + 0.75) / 2; class 1: p1 of its sample = 0.5
    torch.testing.assert_close(class_confidence(logits, labels, 2), torch.tensor([0.625, 0.5]))


def test_clap_starts_at_zero_shot_and_adds_the_class_adaptive_term(clip):
    task = task_with_val()
    method = create_method("clap", clip, task.labels)
    zero_shot = create_method("zeroshot", clip, task.labels)
    features = torch.randn(4, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        torch.testing.assert_close(method({"features": features})["logits"],
                                   zero_shot({"features": features})["logits"], atol=1e-4, rtol=1e-5)
    assert not torch.allclose(method.anchors.norm(dim=-1), torch.ones(3))  # raw text features, as officially
    trainer = Trainer(method, views_config(epochs=2, lr=0.5))
    trainer.fit(task)
    views = trainer.cached_features(task.train, train=True)
    all_labels = torch.tensor(task.train.labels).repeat(3)
    with torch.no_grad():
        zs_logits = zero_shot({"features": views.flatten(0, 1)})["logits"]
    torch.testing.assert_close(method.multipliers, class_confidence(zs_logits, all_labels, 3), atol=1e-5,
                               rtol=1e-4)
    with torch.no_grad():
        out = method({"features": features, "label": labels})
        ce = torch.nn.functional.cross_entropy(out["logits"], labels)
        by_hand = sum(float(method.multipliers[c]) * float(((method.prototypes[c] - method.anchors[c]) ** 2).sum())
                      for c in range(3)) / 3
    assert by_hand > 0
    assert float(out["loss"] - ce) == pytest.approx(by_hand, rel=1e-4)


def test_paper_presets_build_valid_configs():
    from pathlib import Path

    import yaml

    from vlprompt.core.config import build_config
    from vlprompt.methods import METHODS, import_all
    from vlprompt.train import TrainConfig

    import_all()
    folder = Path(__file__).resolve().parents[1] / "src" / "vlprompt" / "presets"
    for name in ("clip-lora", "tip-adapter", "tip-adapter-f", "clap"):
        preset = yaml.safe_load((folder / f"{name}-paper.yaml").read_text(encoding="utf-8"))
        assert preset["method"] == name and preset["source"] and preset["description"]
        build_config(TrainConfig, preset["train"], where=f"{name} preset train")
        build_config(METHODS.get(name).config_class, preset["method_options"], where=f"{name} preset")
