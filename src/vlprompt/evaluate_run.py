"""Evaluate a trained run folder: on its own test split, or on another dataset (new classes, shifted domains)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from vlprompt.artifacts.checkpoint import load_prompts
from vlprompt.artifacts.files import CONFIG_NAME
from vlprompt.artifacts.run_dir import RunDir
from vlprompt.backbones.registry import create_backbone
from vlprompt.core.errors import VlpromptError
from vlprompt.data.fewshot import base_new_split
from vlprompt.data.registry import load_dataset
from vlprompt.eval.tasks import scores
from vlprompt.experiment import run_config_from_dict
from vlprompt.methods.base import create_method


def evaluate_run(run_dir: str | Path, dataset: str | None = None, root: str | None = None, split: str = "test",
                 options: dict | None = None, device: str | None = None,
                 batch_size: int | None = None, inference: str | None = None,
                 stride: int | None = None) -> list[dict]:
    """Accuracy of a run folder's prompts. ``dataset`` (default: the run's own) and ``root`` (default: the
    run's own, stored resolved) each replace only themselves: ``root`` alone evaluates the run's dataset read
    from another place. ``device`` and ``batch_size`` default to the run's own training config
    (train.device, train.eval_batch_size, train.num_workers). For segmentation runs the record holds mIoU, mAcc,
    aAcc and per-class IoU at the original image size; ``inference`` is 'whole' (default) or 'slide' (windows
    every ``stride`` pixels, default 2/3 of the input size)."""
    folder = RunDir(run_dir)
    saved = folder.read_config()
    if saved is None or "run" not in saved:
        raise VlpromptError(f"'{folder.path}' is not a run folder: {CONFIG_NAME} is missing. Pass the --out folder "
                            "of 'vlprompt train' (or of a Trainer(..., out_dir=...)).")
    config = run_config_from_dict({**saved["run"], "out": None})
    if dataset is None:
        task = load_dataset(config.dataset, root=root if root is not None else config.root,
                            **{**config.dataset_options, **(options or {})})
        if config.protocol == "base2new":
            task = base_new_split(task)[0]
    else:
        task = load_dataset(dataset, root=root, **(options or {}))
    data = {"test": task.test, "val": task.val, "train": task.train}[split]
    if data is None:
        raise VlpromptError(f"Dataset '{task.name}' has no '{split}' split.")
    backbone = create_backbone(config.backbone)
    method = create_method(config.method, backbone, task.labels, **dataclasses.asdict(config.method_options))
    load_prompts(method, folder.path)
    train = config.train_config()
    options = {} if data.task_type == "classification" else {"mode": inference or "whole", "stride": stride}
    if data.task_type == "classification" and (inference is not None or stride is not None):
        raise VlpromptError("inference / stride choose how a segmentation run predicts masks; this run classifies. "
                            "Drop them.")
    measured = scores(method, data, batch_size=batch_size or train.eval_batch_size, device=device or train.device,
                      num_workers=train.resolved_num_workers(), **options)
    return [{"method": config.method, "backbone": config.backbone, "dataset": task.name, "split": split,
             **measured}]
