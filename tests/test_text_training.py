"""Text methods through the single Trainer: cached == uncached training, prompt checkpoints, new classes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vlprompt.methods.cocoop
import vlprompt.methods.coop
import vlprompt.methods.kgcoop
import vlprompt.methods.mocoop
import vlprompt.methods.prograd
import vlprompt.methods.zeroshot  # noqa: F401
from vlprompt.artifacts.checkpoint import load_prompts, save_prompts
from vlprompt.backbones.tiny import tiny_open_clip
from vlprompt.core.errors import CheckpointError
from vlprompt.data.base import ImageDataset, LabelSpace, TaskData
from vlprompt.eval.tasks import evaluate
from vlprompt.methods.base import create_method
from vlprompt.train import TrainConfig, Trainer
from vlprompt.train.trainer import predict

CLASSES = ["circle", "square", "triangle"]
GROUPS = {"photo": ["a photo of a {}.", "a picture of a {}."], "sketch": ["a sketch of a {}."]}


class ToyLoader:
    """Deterministic coloured-noise images; the class decides the mean colour."""

    def __call__(self, source: str) -> Image.Image:
        index = int(source.split("/")[-1])
        rng = np.random.default_rng(index)
        base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]])[index % 3]
        pixels = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels)


def toy_task(n_train: int = 12, n_test: int = 9) -> TaskData:
    def split(name: str, start: int, count: int) -> ImageDataset:
        indices = range(start, start + count)
        return ImageDataset([f"toy/{name}/{i}" for i in indices], [i % 3 for i in indices], ToyLoader(), name=f"toy:{name}")

    space = LabelSpace(list(CLASSES), ["a photo of a {}."], dict(GROUPS))
    return TaskData("toy", space, split("train", 0, n_train), split("test", 1000, n_test))


@pytest.fixture(scope="module")
def clip():
    return tiny_open_clip(seed=0)


def train_config(**overrides) -> TrainConfig:
    options = {"epochs": 2, "batch_size": 4, "lr": 0.01, "augment": "none", "device": "cpu", "progress": False, "seed": 1}
    options.update(overrides)
    return TrainConfig(**options)


@pytest.mark.parametrize("name", ["coop", "prograd"])
def test_cached_and_uncached_training_give_the_same_prompts(clip, name):
    task = toy_task()
    torch.manual_seed(0)
    cached = create_method(name, clip, task.labels, n_ctx=4)
    torch.manual_seed(0)
    uncached = create_method(name, clip, task.labels, n_ctx=4)
    uncached.uses_image_features = False  # runs the image tower every step, like the reference code
    Trainer(cached, train_config()).fit(task)
    Trainer(uncached, train_config()).fit(task)
    assert not torch.equal(cached.prompt.ctx, create_method(name, clip, task.labels, n_ctx=4).prompt.ctx)
    torch.testing.assert_close(cached.prompt.ctx, uncached.prompt.ctx, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "name, options",
    [("coop", {"n_ctx": 4}), ("cocoop", {}), ("prograd", {"n_ctx": 4}), ("kgcoop", {"n_ctx": 4}), ("mocoop", {})],
)
def test_every_text_method_trains_and_round_trips_a_prompt_checkpoint(clip, tmp_path, name, options):
    task = toy_task()
    method = create_method(name, clip, task.labels, **options)
    before = {n: t.clone() for n, t in method.trainable_state_dict().items()}
    Trainer(method, train_config(epochs=1)).fit(task)
    after = method.trainable_state_dict()
    assert any(not torch.equal(before[n], after[n]) for n in after)
    accuracy = evaluate(method, task.test, batch_size=4)
    path = save_prompts(method, tmp_path)
    stored = load_file(str(path))
    assert set(stored) == set(after)  # only what was trained, never a backbone weight
    assert not any(key.startswith(("visual.", "text.", "backbone.")) for key in stored)
    fresh = create_method(name, clip, task.labels, **options)
    load_prompts(fresh, tmp_path)
    assert evaluate(fresh, task.test, batch_size=4) == accuracy


def test_checkpoint_evaluates_on_a_different_class_list(clip, tmp_path):
    task = toy_task()
    method = create_method("coop", clip, task.labels, n_ctx=4)
    Trainer(method, train_config(epochs=1)).fit(task)
    save_prompts(method, tmp_path)
    new_labels = LabelSpace(["hexagon", "star"], ["a photo of a {}."])
    new_task_test = ImageDataset([f"toy/new/{i}" for i in range(4)], [i % 2 for i in range(4)], ToyLoader(), name="new")
    on_new = create_method("coop", clip, new_labels, n_ctx=4)
    load_prompts(on_new, tmp_path)
    torch.testing.assert_close(on_new.prompt.ctx, method.prompt.ctx)
    logits, _ = predict(on_new, new_task_test, batch_size=4)
    assert logits.shape == (4, 2) and torch.isfinite(logits).all()


def test_class_specific_checkpoint_refuses_new_classes(clip, tmp_path):
    task = toy_task()
    method = create_method("coop", clip, task.labels, n_ctx=2, class_specific=True)
    save_prompts(method, tmp_path)
    other = create_method("coop", clip, LabelSpace(["a", "b", "c"]), n_ctx=2, class_specific=True)
    with pytest.raises(CheckpointError, match="class-dependent"):
        load_prompts(other, tmp_path)


def test_zero_shot_needs_no_training(clip):
    task = toy_task()
    method = create_method("zeroshot", clip, task.labels)
    result = Trainer(method, train_config()).fit(task)
    assert result.steps == 0
    logits, labels = predict(method, task.test, batch_size=4)
    assert evaluate(method, task.test, batch_size=4) == (logits.argmax(1) == labels).float().mean().item()
