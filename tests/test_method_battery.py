"""One battery over every registered method (DESIGN.md, convention 7).

Each method is built on a tiny random-init open_clip CLIP (both towers, so text and visual methods alike run),
trained for one short epoch through the single Trainer into a run folder, then checked for what every method
promises: finite logits of shape [batch, classes]; training moves exactly the tensors it says it
trains; the checkpoint holds those tensors and nothing of the backbone; and a freshly built method that loads
the checkpoint predicts exactly what the trained one predicts.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlprompt.artifacts.checkpoint import load_prompts
from vlprompt.artifacts.run_dir import RunDir
from vlprompt.backbones.tiny import tiny_open_clip
from vlprompt.core.errors import CheckpointError
from vlprompt.data.base import ImageDataset, LabelSpace, TaskData
from vlprompt.methods import list_methods
from vlprompt.methods.base import create_method
from vlprompt.serve.export import classifier_head
from vlprompt.train import TrainConfig, Trainer
from vlprompt.train.trainer import predict

CLASSES = ["red circle", "green square", "blue triangle"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]
GROUPS = {"photo": ["a photo of a {}.", "a picture of a {}."], "drawing": ["a drawing of a {}."]}
# Small but valid settings where a method's defaults are sized for ViT-B/16 or a long recipe.
OPTIONS = {
    "partial-k": {"k": 1},
    "mocoop": {"top_k": 1},
    # the official side network (AlexNet) cannot take 32-px images, and no ImageNet weights exist offline
    "sidetune": {"side_model": "test_efficientnet", "side_pretrained": False},
}
# Methods whose logits are a fixed affine map of the frozen image feature: exported as a plain classifier head.
EXPORTABLE = {"zeroshot", "zeroshot-ensemble", "linear", "coop", "prograd", "kgcoop", "clap"}
# Training-free methods: nothing moves during training (their fitted tensors come from the data, not from SGD).
TRAINING_FREE = {"zeroshot", "zeroshot-ensemble", "tip-adapter"}


class ColourNoise:
    """Deterministic coloured-noise images; the class decides the mean colour."""

    def __call__(self, source: str) -> Image.Image:
        index = int(source.split("/")[-1])
        rng = np.random.default_rng(index)
        base = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]])[index % 3]
        return Image.fromarray(np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8))


def battery_task() -> TaskData:
    def split(name: str, start: int, count: int) -> ImageDataset:
        ids = range(start, start + count)
        return ImageDataset([f"toy/{name}/{i}" for i in ids], [i % 3 for i in ids], ColourNoise(), name=f"toy:{name}")

    labels = LabelSpace(list(CLASSES), list(TEMPLATES), dict(GROUPS))
    return TaskData("toy", labels, split("train", 0, 12), split("test", 1000, 6), split("val", 500, 6))


def backbone_state(backbone) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v for i, module in enumerate(backbone.modules()) for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def clip():
    return tiny_open_clip(seed=0)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_trains_saves_and_reloads_exactly(clip, name, tmp_path):
    task = battery_task()
    torch.manual_seed(0)
    method = create_method(name, clip, task.labels, **OPTIONS.get(name, {}))
    backbone_before = {k: v.clone() for k, v in backbone_state(clip).items()}
    initial = method.trainable_state_dict()

    config = TrainConfig(epochs=1, batch_size=4, lr=0.01, augment="none", device="cpu", progress=False, seed=1,
                         num_workers=0)
    Trainer(method, config, out_dir=tmp_path).fit(task)

    # The frozen backbone stays frozen, bit for bit.
    for key, value in backbone_state(clip).items():
        assert torch.equal(value, backbone_before[key]), f"{name} changed backbone weight {key}"

    # Prediction: finite logits of shape [items, classes].
    logits, _ = predict(method, task.test, batch_size=4)
    assert logits.shape == (len(task.test), len(CLASSES))
    assert torch.isfinite(logits).all()

    trained = method.trainable_state_dict()
    if name not in TRAINING_FREE:
        moved = [k for k in trained if k in initial and not torch.equal(trained[k], initial[k])]
        assert moved, f"{name}: one epoch of training moved none of its trainable tensors"

    # The checkpoint holds exactly what the method says it trained, and no backbone tensor.
    saved = load_file(str(RunDir(tmp_path).prompts))
    assert set(saved) == set(trained)
    for key, tensor in saved.items():
        assert not key.startswith("backbone."), f"{name} saved a backbone tensor: {key}"
        assert torch.equal(tensor, trained[key])
    assert sum(t.numel() for t in saved.values()) < sum(v.numel() for v in backbone_state(clip).values())

    # A fresh method (other random init) that loads the checkpoint predicts exactly what the trained one does.
    torch.manual_seed(123)
    fresh = create_method(name, clip, task.labels, **OPTIONS.get(name, {}))
    load_prompts(fresh, tmp_path)
    reloaded, _ = predict(fresh, task.test, batch_size=4)
    torch.testing.assert_close(reloaded, logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_exports_an_exact_classifier_or_refuses(clip, name):
    task = battery_task()
    torch.manual_seed(0)
    method = create_method(name, clip, task.labels, **OPTIONS.get(name, {}))
    if hasattr(method, "prepare"):  # cache models fit their tensors from the training data first
        Trainer(method, TrainConfig(epochs=0, augment="none", device="cpu", progress=False, num_workers=0)).fit(task)
    if name not in EXPORTABLE:
        with pytest.raises(CheckpointError, match="cannot be exported as a classifier"):
            classifier_head(method)
        return
    head = classifier_head(method)
    features = torch.randn(5, method.backbone.visual.feature_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = method.predict({"features": features}).float()
    torch.testing.assert_close(head(features), expected, rtol=1e-5, atol=1e-5)
