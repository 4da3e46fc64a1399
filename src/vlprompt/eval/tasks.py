"""Task types: what the one Trainer and the evaluators do differently for classification and segmentation.

A dataset declares its ``task_type`` (data/base.py ``ImageDataset.task_type``; data/segmentation.py); the loop
asks ``task_type_of(dataset)`` for the training and evaluation transforms and for the evaluation itself, instead
of testing classes. ``evaluate`` returns the task's primary metric (top-1 accuracy; mIoU), which is what
validation selects on; ``scores`` returns every metric a result record holds.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vlprompt.backbones.base import PreprocessConfig
from vlprompt.core.errors import unknown_name
from vlprompt.data.base import ImageDataset
from vlprompt.data.mask_transforms import SegmentationEvalTransform, SegmentationTrainTransform
from vlprompt.data.transforms import eval_transform, train_transform
from vlprompt.eval.predict import top1_accuracy
from vlprompt.eval.segment_predict import evaluate_segmentation


def _classification_scores(method, dataset: ImageDataset, **kwargs) -> dict:
    return {"accuracy": top1_accuracy(method, dataset, **kwargs)}


def _segmentation_scores(method, dataset: ImageDataset, **kwargs) -> dict:
    scores = evaluate_segmentation(method, dataset, **kwargs)
    # "accuracy" is the pixel accuracy (aAcc): an accuracy by name and by value; mIoU is the primary metric.
    return {"accuracy": scores["aAcc"], "metric": "mIoU", "task_type": "segmentation", **scores}


@dataclass(frozen=True)
class TaskType:
    """How one task type trains and is scored. ``primary`` names the key of ``scores`` that ``evaluate`` returns."""

    name: str
    primary: str
    train_transform: Callable[[PreprocessConfig, str], Callable]
    eval_transform: Callable[[PreprocessConfig], Callable]
    scores: Callable[..., dict]


TASK_TYPES = {
    "classification": TaskType("classification", "accuracy", train_transform, eval_transform,
                               _classification_scores),
    "segmentation": TaskType("segmentation", "mIoU", SegmentationTrainTransform, SegmentationEvalTransform,
                             _segmentation_scores),
}


def task_type_of(dataset: ImageDataset) -> TaskType:
    name = dataset.task_type
    if name not in TASK_TYPES:
        raise unknown_name("task type", name, TASK_TYPES)
    return TASK_TYPES[name]


def scores(method, dataset: ImageDataset, **kwargs) -> dict:
    """Every metric of ``method`` on ``dataset`` for its task type (``accuracy`` always present)."""
    return task_type_of(dataset).scores(method, dataset, **kwargs)


def evaluate(method, dataset: ImageDataset, **kwargs) -> float:
    """The task's primary metric in [0, 1]: top-1 accuracy for classification, mIoU for segmentation."""
    kind = task_type_of(dataset)
    value = kind.scores(method, dataset, **kwargs)[kind.primary]
    return float("nan") if value is None else float(value)
