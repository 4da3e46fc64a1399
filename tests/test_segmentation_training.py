"""What makes segmentation training learn, and where its outputs go: the world task's colour labels, SETR's head
learning-rate multiplier through the optimizer, a head that over-fits a handful of images (slow), and export /
serve-batch refusing a segmentation run with the command that writes masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vlprompt.backbones.registry import create_backbone
from vlprompt.backbones.tiny import tiny_timm_vit
from vlprompt.core.errors import CheckpointError, ConfigError
from vlprompt.data.registry import load_dataset
from vlprompt.data.world.segmentation import world_seg_pair, world_seg_scene
from vlprompt.data.world.vocab import VOCAB
from vlprompt.eval.tasks import scores
from vlprompt.methods import create_method
from vlprompt.serve.export import classifier_head
from vlprompt.serve.serving import MultiTaskPredictor
from vlprompt.train import TrainConfig, Trainer
from vlprompt.train.schedule import build_optimizer


@pytest.fixture(scope="module")
def task():
    return load_dataset("world-seg", train_images=4, val_images=0, test_images=2)


def test_colour_labels_are_the_same_pixels_named_by_paint():
    colour = load_dataset("world-seg", train_images=6, test_images=1, classes="colour")
    assert colour.labels.classnames == ["background", *VOCAB.colours]
    for index in range(6):
        shape_mask = np.asarray(world_seg_pair("seg", VOCAB.seen_styles, "train", index, 0, 32, "shape")[1])
        colour_mask = np.asarray(colour.train[index][1])
        assert np.array_equal(shape_mask > 0, colour_mask > 0)  # the same objects' pixels, other names
        objects = world_seg_scene("seg", VOCAB.seen_styles, "train", index, 0).objects
        names = {colour.labels.classnames[v] for v in np.unique(colour_mask).tolist() if v}
        visible = {obj.colour for obj in objects}
        assert names <= visible and len(names) >= 1
    with pytest.raises(ConfigError, match="classes = 'texture'.*shape.*colour"):
        load_dataset("world-seg", classes="texture")


def test_segmentation_head_trains_at_setrs_multiplier_beside_tower_weights(task):
    finetune = create_method("finetune", tiny_timm_vit(), task.labels, head={"channels": 8})
    params = finetune.trainable_parameters()
    head = {id(p) for p in finetune.head.parameters()}
    assert [s for p, s in zip(params, finetune.lr_scales()) if id(p) in head] == [10.0] * len(head)
    assert {s for p, s in zip(params, finetune.lr_scales()) if id(p) not in head} == {1.0}
    lora = create_method("lora", tiny_timm_vit(), task.labels, head={"channels": 8})
    assert sorted(set(lora.lr_scales())) == [1.0, 10.0]
    # prompts and the linear probe's head share the method's lr unless the head option says otherwise
    assert set(create_method("vpt-deep", tiny_timm_vit(), task.labels, head={"channels": 8}).lr_scales()) == {1.0}
    vpt = create_method("vpt-deep", tiny_timm_vit(), task.labels, head={"channels": 8, "lr_mult": 3.0})
    assert sorted(set(vpt.lr_scales())) == [1.0, 3.0]
    assert set(create_method("finetune", tiny_timm_vit(), load_dataset("world-colour").labels).lr_scales()) == {1.0}

    optimizer = build_optimizer(TrainConfig(lr=1e-3, optimizer="adamw"), params, 1, finetune.lr_scales())
    assert [(g["lr_scale"], g["lr"], len(g["params"])) for g in optimizer.param_groups] == [
        (1.0, 1e-3, len(params) - len(head)), (10.0, pytest.approx(1e-2), len(head))]


def test_the_trainer_steps_each_group_at_the_scheduled_lr_times_its_scale(task, monkeypatch):
    torch.manual_seed(0)
    method = create_method("finetune", tiny_timm_vit(), task.labels, head={"channels": 8, "lr_mult": 4.0})
    seen: list[tuple[float, float]] = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append(tuple(g["lr"] for g in self.param_groups))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    config = TrainConfig(epochs=1, batch_size=2, lr=1e-3, optimizer="adamw", scheduler="constant",
                         warmup_epochs=0.0, num_workers=0, progress=False, augment="none")
    Trainer(method, config).fit(task)
    assert seen == [(1e-3, 4e-3), (1e-3, 4e-3)]


def test_export_and_serve_batch_refuse_a_segmentation_run_and_name_predict(task):
    method = create_method("linear", tiny_timm_vit(), task.labels, head={"channels": 8})
    with pytest.raises(CheckpointError, match=r"segmentation run \('linear'\).*SETR decoder.*vlprompt predict"):
        classifier_head(method)
    with pytest.raises(CheckpointError, match=r"Task 'seg' is a segmentation run.*per-pixel mask.*vlprompt predict"):
        MultiTaskPredictor({"seg": method})


@pytest.mark.slow
def test_a_setr_head_overfits_eight_world_images():
    """The trivially learnable case: a linear SETR head on the frozen world:mae tower memorises 8 images' masks
    (24 shapes + background). Measured: train mIoU 0.955 after 200 steps; the all-background answer is 0.036."""
    task = load_dataset("world-seg", train_images=8, val_images=0, test_images=1)
    torch.manual_seed(0)
    method = create_method("linear", create_backbone("world:mae"), task.labels,
                           head={"channels": 32, "aux_blocks": "none"})
    config = TrainConfig(epochs=200, batch_size=8, lr=1e-2, optimizer="adamw", weight_decay=1e-4, augment="none",
                         scheduler="constant", warmup_epochs=0.0, num_workers=0, progress=False, val_every=1000,
                         seed=0)
    Trainer(method, config).fit(task)
    assert scores(method, task.train)["mIoU"] >= 0.9
