"""Multi-task serving: one frozen backbone, many prompt folders, one mixed batch == each task run alone."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from artifact_helpers import LABELS, images, randomize

import vlprompt
from vlprompt.backbones.registry import create_backbone
from vlprompt.cli import main
from vlprompt.core.errors import CheckpointError, VlpromptError
from vlprompt.data.base import LabelSpace
from vlprompt.data.transforms import eval_transform
from vlprompt.methods import create_method
from vlprompt.serve.serving import MultiTaskPredictor

OTHER = LabelSpace(["circle", "square", "star", "moon"], ["a photo of a {}."])

TASKS = {  # name -> (method, options, labels): visual prompts of 2 and 4 tokens, shallow and deep, text heads
    "vpt4": ("vpt-shallow", {"num_tokens": 4}, LABELS),
    "deep4": ("vpt-deep", {"num_tokens": 4}, OTHER),
    "deep2": ("vpt-deep", {"num_tokens": 2, "projection_dim": 8}, LABELS),
    "spt2": ("spt-shallow", {"num_tokens": 2}, OTHER),
    "coop": ("coop", {"n_ctx": 3}, OTHER),
    "kgcoop": ("kgcoop", {"n_ctx": 2}, LABELS),
    "zeroshot": ("zeroshot", {}, OTHER),
    "linear": ("linear", {}, LABELS),
    "cocoop": ("cocoop", {}, LABELS),
}


def build(backbone, tasks=TASKS, **extra_options):
    methods = {}
    for seed, (name, (method, options, labels)) in enumerate(tasks.items()):
        methods[name] = create_method(method, backbone, labels, **{**options, **extra_options.get(name, {})})
        randomize(methods[name], seed + 10)
        methods[name].eval()
    return methods


def pixels(backbone, count: int) -> torch.Tensor:
    transform = eval_transform(backbone.preprocess)
    return torch.stack([transform(image) for image in images(count, seed=1)])


def assert_mixed_equals_alone(predictor, methods, x, tasks) -> None:
    mixed = predictor.logits(x, tasks)
    for name, method in methods.items():
        rows = [i for i, t in enumerate(tasks) if t == name]
        if not rows:
            continue
        with torch.no_grad():
            alone = method.predict({"image": x[rows]})
        torch.testing.assert_close(torch.stack([mixed[i] for i in rows]), alone, atol=1e-5, rtol=1e-5)


def test_a_mixed_batch_equals_each_task_alone_on_a_clip_image_tower():
    backbone = create_backbone("tiny:open_clip")
    methods = build(backbone)
    predictor = MultiTaskPredictor(methods)
    assert predictor.kinds["vpt4"] == "visual" and predictor.kinds["coop"] == "features"
    names = list(methods)
    tasks = [names[(5 * i + 1) % len(names)] for i in range(24)]
    assert set(tasks) == set(names)
    assert_mixed_equals_alone(predictor, methods, pixels(backbone, 24), tasks)


def test_mean_pooled_backbone_with_and_without_prompts_in_the_readout():
    backbone = create_backbone("tiny:timm_mae")
    tasks = {
        "in": ("vpt-deep", {"num_tokens": 3, "pool_prompts": True}, LABELS),
        "out": ("vpt-deep", {"num_tokens": 3, "pool_prompts": False}, OTHER),
        "shallow": ("vpt-shallow", {"num_tokens": 3, "pool_prompts": False}, LABELS),
        "probe": ("linear", {}, OTHER),
    }
    methods = build(backbone, tasks)
    tasks_of_rows = ["in", "out", "shallow", "probe", "out", "in", "in", "shallow"]
    assert_mixed_equals_alone(MultiTaskPredictor(methods), methods, pixels(backbone, 8), tasks_of_rows)


def test_folders_share_one_backbone_and_the_cli_serves_a_csv(tmp_path, capsys):
    backbone = create_backbone("tiny:open_clip")
    methods = build(backbone, {k: TASKS[k] for k in ("vpt4", "coop", "linear")})
    for name, method in methods.items():
        vlprompt.save_pretrained(method, tmp_path / name)
    predictor = MultiTaskPredictor({name: tmp_path / name for name in methods})
    backbones = {id(m.backbone) for m in predictor.methods.values()}
    assert len(backbones) == 1  # loaded once, shared
    folder = tmp_path / "imgs"
    folder.mkdir()
    tasks = ["vpt4", "coop", "linear", "coop", "vpt4"]
    with open(tmp_path / "requests.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "task"])
        for i, (image, task) in enumerate(zip(images(5, seed=1), tasks)):
            image.save(folder / f"{i}.png")
            writer.writerow([f"imgs/{i}.png", task])
    args = ["serve-batch", str(tmp_path / "requests.csv"), "--topk", "2", "--output", str(tmp_path / "out.json")]
    args += [item for name in methods for item in ("--task", f"{name}={tmp_path / name}")]
    assert main(args) == 0
    served = json.loads((tmp_path / "out.json").read_text())
    assert [r["task"] for r in served] == tasks
    for i, (record, task, image) in enumerate(zip(served, tasks, images(5, seed=1))):
        alone = methods[task].predict_images([image], topk=2)[0]
        assert record["labels"] == alone["labels"]
        assert record["probs"] == pytest.approx(alone["probs"], abs=1e-5)
        assert record["input"].endswith(f"imgs/{i}.png")


def test_tasks_on_other_weights_or_with_trained_backbone_weights_are_refused(tmp_path):
    first = create_method("coop", create_backbone("tiny:open_clip"), LABELS, n_ctx=2)
    second = create_method("coop", create_backbone("tiny:open_clip", seed=1), LABELS, n_ctx=2)
    vlprompt.save_pretrained(first, tmp_path / "a")
    vlprompt.save_pretrained(second, tmp_path / "b")
    with pytest.raises(CheckpointError, match="weights hash"):
        MultiTaskPredictor({"a": tmp_path / "a", "b": tmp_path / "b"})
    finetuned = create_method("partial-k", create_backbone("tiny:timm_vit"), LABELS)
    with pytest.raises(CheckpointError, match="trained backbone weights"):
        MultiTaskPredictor({"ft": finetuned})
    predictor = MultiTaskPredictor({"a": first})
    with pytest.raises(VlpromptError, match="Unknown task"):
        predictor.logits(torch.zeros(1, 3, 32, 32), ["b"])
