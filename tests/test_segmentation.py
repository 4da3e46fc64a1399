"""Segmentation through the library's own methods, Trainer and run folders: the patch-grid seam, SETR heads as
defined, exact confusion-matrix metrics, whole and sliding-window inference, and train -> eval -> predict -> report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from vlprompt.backbones.tiny import tiny_timm_vit
from vlprompt.cli import main
from vlprompt.core.errors import ConfigError
from vlprompt.data.registry import load_dataset
from vlprompt.eval.segment_metrics import confusion_matrix, segmentation_scores
from vlprompt.eval.segment_predict import segment_logits
from vlprompt.eval.tasks import evaluate
from vlprompt.methods import create_method
from vlprompt.methods.heads import SegmentationHead
from vlprompt.prompts.setr import setr_aux_blocks, setr_spec
from vlprompt.prompts.visual import VisualPrompts
from vlprompt.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def task():
    return load_dataset("world-seg", train_images=8, val_images=4, test_images=6)


def test_patch_grid_drops_prefix_and_prompt_tokens():
    visual = tiny_timm_vit().visual  # 32 px, patch 8: a 4x4 grid after one class token
    images = torch.randn(2, 3, 32, 32)
    tokens = visual.embed(images)
    grid = visual.patch_grid(tokens, 0, (4, 4))
    assert grid.shape == (2, visual.width, 4, 4)
    torch.testing.assert_close(grid[:, :, 2, 3], tokens[:, 1 + 2 * 4 + 3])
    prompted = VisualPrompts(5, visual.width).insert(tokens, 0, visual.num_prefix_tokens)
    torch.testing.assert_close(visual.patch_grid(prompted, 5, (4, 4)), grid)


def test_setr_layouts_follow_the_definitions():
    def layout(*args):
        spec = setr_spec(*args)
        return spec.channels, spec.num_convs, spec.kernel_size, spec.up_scale

    assert layout("setr-naive", 16, 256, None, None, None) == (256, 1, 1, 4)
    assert layout("setr-pup", 16, 256, None, None, None) == (256, 4, 3, 2)  # x16: full resolution
    assert layout("setr-pup", 4, 64, None, None, None) == (64, 2, 3, 2)
    assert setr_aux_blocks("setr", 24) == (9, 14, 19)
    assert setr_aux_blocks("setr", 12) == (4, 7, 9)
    assert setr_aux_blocks("none", 12) == ()


def test_setr_naive_head_equals_its_definition_by_hand(task):
    backbone = tiny_timm_vit(depth=2)
    method = create_method("linear", backbone, task.labels, head={"kind": "setr-naive", "channels": 8,
                                                                   "aux_blocks": "none"})
    method.eval()
    head = method.head.decoder
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = method({"image": images})["logits"]
        tokens = backbone.visual.embed(images)
        for index in range(backbone.visual.num_blocks):
            tokens = backbone.visual.block(index, tokens)
        patches = F.layer_norm(tokens[:, 1:], (backbone.visual.width,), head.norm.weight, head.norm.bias, 1e-6)
        x = patches.transpose(1, 2).reshape(2, -1, 4, 4)
        conv, bn = head.stages[0][0], head.stages[0][1]
        x = F.conv2d(x, conv.weight)  # 1x1, no bias (a norm follows)
        x = (x - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
        x = torch.relu(x * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])
        x = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
        x = F.conv2d(x, head.classifier.weight, head.classifier.bias)
        expected = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, expected)
    assert logits.shape == (2, task.labels.num_classes, 32, 32)


def test_confusion_metrics_are_exact():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 3]])
    confusion = confusion_matrix(pred, label, num_classes=4, ignore_index=255)
    assert confusion.sum() == 7  # the ignored pixel is not counted
    scores_ = segmentation_scores(confusion, ["a", "b", "c", "d"])
    # a: TP1 FP1 FN1 -> 1/3; b: TP2 FP1 FN1 -> 2/4; c: TP1 FP0 FN1 -> 1/2; d: no label, 1 predicted -> 0
    assert scores_["per_class_iou"] == pytest.approx({"a": 1 / 3, "b": 0.5, "c": 0.5, "d": 0.0})
    assert scores_["mIoU"] == pytest.approx((1 / 3 + 0.5 + 0.5 + 0.0) / 4)
    assert scores_["per_class_acc"]["d"] is None  # no ground truth: no accuracy, left out of mAcc
    assert scores_["mAcc"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert scores_["aAcc"] == pytest.approx(4 / 7)


def test_sliding_window_with_one_window_is_whole_inference(task):
    method = create_method("vpt-deep", tiny_timm_vit(), task.labels, num_tokens=2, head={"channels": 8})
    method.eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(segment_logits(method, images, "slide", stride=32), segment_logits(method, images))
    # a larger image at its own size: windows cover it, logits come back at the image's size
    assert segment_logits(method, torch.randn(1, 3, 40, 56), "slide").shape == (1, 25, 40, 56)


@pytest.mark.parametrize("name", ["linear", "finetune", "partial-k", "vpt-shallow", "vpt-deep", "spt-deep", "bias",
                                  "adapter", "adaptformer", "lora", "ssf", "ln-tune", "prompt+bias"])
def test_every_image_method_trains_a_segmentation_head(task, name):
    method = create_method(name, tiny_timm_vit(), task.labels, head={"channels": 8})
    assert isinstance(method.head, SegmentationHead)
    trained = {n for n, p in method.named_parameters() if p.requires_grad}
    if name in ("linear",):
        assert all(n.startswith("head.") for n in trained)
    if name in ("vpt-deep", "spt-deep", "vpt-shallow"):
        assert trained - {n for n in trained if n.startswith("head.")} == {"prompts.tokens"}
    before = {n: p.detach().clone() for n, p in method.named_parameters() if p.requires_grad}
    result = Trainer(method, TrainConfig(epochs=1, batch_size=4, num_workers=0, progress=False)).fit(task)
    assert result.steps == 2
    changed = {n for n, p in method.named_parameters() if n in before and not torch.equal(before[n], p)}
    assert "head.decoder.classifier.weight" in changed
    assert result.val_accuracy == evaluate(method, task.val)  # validation selects on mIoU


def test_classification_only_methods_refuse_segmentation(task):
    with pytest.raises(ConfigError, match="does not support segmentation.*vpt-deep"):
        create_method("coop", tiny_timm_vit(), task.labels)
    with pytest.raises(ConfigError, match="segmentation head"):
        create_method("linear", tiny_timm_vit(), load_dataset("world-colour").labels, head={"kind": "setr-pup"})


def test_train_eval_predict_report_from_the_run_folder(tmp_path: Path, capsys):
    run = tmp_path / "runs" / "vpt"
    items = ["method=vpt-deep", "backbone=world:mae", "dataset=world-seg", "shots=0", "method_options.num_tokens=2",
             "dataset_options.train_images=8", "dataset_options.val_images=0", "dataset_options.test_images=4",
             "method_options.head.channels=8", "train.epochs=1", "train.batch_size=4", "train.num_workers=0"]
    assert main(["train", "--out", str(run), *items]) == 0
    record = json.loads((run / "results.json").read_text())[0]
    assert record["metric"] == "mIoU" and set(record["per_class_iou"]) == set(load_dataset("world-seg").labels.classnames)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert f"{record['mIoU']:.4f}" in capsys.readouterr().out  # the folder evaluates to its recorded mIoU
    images = tmp_path / "images"
    images.mkdir()
    task = load_dataset("world-seg", test_images=2)
    task.test[0][0].resize((40, 24)).save(images / "a.jpg")
    assert main(["predict", str(run), str(images)]) == 0
    mask = __import__("PIL.Image", fromlist=["Image"]).open(images / "a.mask.png")
    assert mask.mode == "P" and mask.size == (40, 24) and (images / "a.overlay.png").is_file()
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Segmentation: world-seg" in report and f"{100 * record['mIoU']:.2f}" in report


EVAL_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from vlprompt.backbones.tiny import tiny_timm_vit
    from vlprompt.data.registry import load_dataset
    from vlprompt.methods import create_method
    from vlprompt.core import distributed
    from vlprompt.eval.tasks import scores

    distributed.init_from_env()
    task = load_dataset("world-seg", train_images=1, test_images=5)
    torch.manual_seed(0)
    method = create_method("vpt-shallow", tiny_timm_vit(), task.labels, num_tokens=2, head={"channels": 8})
    result = scores(method, task.test, batch_size=2)
    if distributed.rank() == 0:
        json.dump({k: result[k] for k in ("mIoU", "mAcc", "aAcc", "pixels")}, open(sys.argv[1], "w"))
    """
)


def test_two_processes_sum_their_confusion_matrices(tmp_path: Path):
    script = tmp_path / "evaluate.py"
    script.write_text(EVAL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    subprocess.run([*torchrun, str(script), str(tmp_path / "two.json")], env=env, check=True, timeout=300)
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], env=env, check=True, timeout=300)
    two, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert two["pixels"] == one["pixels"] == 5 * 32 * 32  # every image counted once over the two ranks
    assert two == pytest.approx(one)
