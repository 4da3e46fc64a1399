"""Segmentation metrics from one confusion matrix accumulated over every pixel of a split (exact, no per-image
averaging), as mmsegmentation's IoUMetric computes them.

``confusion[g, p]`` counts pixels of ground-truth class g predicted as p (ignored pixels never enter). Per class:
IoU = TP / (TP + FP + FN), Acc = TP / (TP + FN). mIoU and mAcc average over classes with a defined value (a class
absent from both labels and predictions has no IoU; one absent from the labels has no Acc); aAcc = sum TP / pixels.
Under multi-process evaluation each rank counts its share of the images and the matrices are summed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vlprompt.core import distributed


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """[num_classes, num_classes] int64 counts for one prediction / label pair of the same shape."""
    valid = (label != ignore_index) & (label >= 0) & (label < num_classes)
    index = label[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index.flatten(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def reduce_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's matrix (this one alone outside multi-process runs)."""
    if distributed.world_size() > 1:
        summed = confusion.to(distributed.collective_device(), torch.float64)
        distributed.all_reduce_sum_([summed])
        return summed.round().to("cpu", torch.int64)
    return confusion


def segmentation_scores(confusion: torch.Tensor, classnames: Sequence[str]) -> dict:
    """mIoU, mAcc, aAcc (fractions) and per-class IoU / Acc (None where undefined) from a confusion matrix."""
    confusion = confusion.to(torch.float64)
    tp = confusion.diag()
    gt = confusion.sum(dim=1)
    predicted = confusion.sum(dim=0)
    union = gt + predicted - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    total = float(gt.sum())

    def mean(values: torch.Tensor) -> float | None:
        defined = values[~values.isnan()]
        return float(defined.mean()) if defined.numel() else None

    def per_class(values: torch.Tensor) -> dict[str, float | None]:
        return {name: (None if math.isnan(v) else float(v)) for name, v in zip(classnames, values.tolist())}

    return {
        "mIoU": mean(iou),
        "mAcc": mean(acc),
        "aAcc": float(tp.sum()) / total if total else None,
        "per_class_iou": per_class(iou),
        "per_class_acc": per_class(acc),
        "pixels": int(total),
    }
