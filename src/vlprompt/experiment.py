"""One run = one method x backbone x dataset x protocol x shots x seed, from a typed RunConfig.

The CLI, the demo and sweeps all go through ``run_experiment``; it saves the resolved config, the library
version and the backbone id beside every result, so each number in a table traces to its run folder.
"""
from __future__ import annotations

import dataclasses
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlprompt import __version__
from vlprompt.artifacts.card import write_model_card
from vlprompt.backbones.registry import create_backbone
from vlprompt.config_utils import build_config, check_choice, check_range
from vlprompt.data.base import LabelSpace, TaskData
from vlprompt.data.fewshot import base_new_split, few_shot_task
from vlprompt.data.registry import load_dataset
from vlprompt.errors import ConfigError, VlpromptError
from vlprompt.io_utils import atomic_write_json, check_writable_dir
from vlprompt.methods import import_all
from vlprompt.methods.base import METHODS, PromptMethod, create_method
from vlprompt.seeding import seed_everything
from vlprompt.train import distributed
from vlprompt.train.config import TrainConfig
from vlprompt.train.trainer import Trainer, evaluate

log = logging.getLogger(__name__)

PROTOCOLS = ("fewshot", "base2new", "shift")
RESULTS_NAME = "results.json"
CONFIG_NAME = "config.json"


@dataclass
class RunConfig:
    method: str = "linear"
    backbone: str = "world:clip"
    dataset: str = "world-object"
    root: str | None = None
    dataset_options: dict = field(default_factory=dict)
    method_options: dict = field(default_factory=dict)
    protocol: str = "fewshot"
    # Shots per class for training (0 = the whole training split); validation gets min(shots, 4).
    shots: int = 16
    seed: int = 1
    # Domain shift: target datasets (same class names), each {"dataset": name, "root": ..., "options": {...}}.
    targets: list = field(default_factory=list)
    train: dict = field(default_factory=dict)
    out: str | None = None
    # Where few-shot index files live (default: <out>/indices).
    index_dir: str | None = None

    def __post_init__(self) -> None:
        check_choice("run", "protocol", self.protocol, PROTOCOLS)
        check_range("run", "shots", self.shots, 0)
        import_all()
        METHODS.get(self.method)  # raises the close-names error for a mistyped name
        if self.protocol == "shift" and not self.targets:
            raise ConfigError("run.targets is empty: the 'shift' protocol needs at least one target dataset.")
        for i, target in enumerate(self.targets):
            if not isinstance(target, dict) or "dataset" not in target:
                raise ConfigError(f"run.targets[{i}] must be a mapping with a 'dataset' key (and optional 'root', "
                                  "'options').")

    def train_config(self) -> TrainConfig:
        defaults = dict(METHODS.get(self.method).train_defaults)
        return build_config(TrainConfig, {**defaults, **self.train, "seed": self.seed}, where="train")


def _record(config: RunConfig, task: TaskData, split: str, accuracy: float | None, **extra: Any) -> dict:
    return {
        "method": config.method,
        "backbone": config.backbone,
        "dataset": task.name,
        "protocol": config.protocol,
        "shots": config.shots,
        "seed": config.seed,
        "split": split,
        "accuracy": accuracy,
        **extra,
    }


def transfer_to_labels(method: PromptMethod, labels: LabelSpace) -> PromptMethod | None:
    """The same trained prompts on another class list, or None when the method's trained tensors are tied
    to its classes (a linear head, class-specific context)."""
    if method.class_dependent_parameter_names():
        return None
    options = dataclasses.asdict(method.config)
    clone = create_method(method.method_name, method.backbone, labels, **options)
    trained = method.trainable_state_dict()
    own = dict(clone.named_parameters())
    with torch.no_grad():
        for name, tensor in trained.items():
            own[name].copy_(tensor)
    return clone


def _load_task(config: RunConfig) -> TaskData:
    return load_dataset(config.dataset, root=config.root, **config.dataset_options)


def run_experiment(config: RunConfig) -> list[dict]:
    """Train and evaluate one run; returns result records (also written to <out>/results.json)."""
    distributed.init_from_env()
    main_process = distributed.is_main_process()
    out = Path(config.out) if config.out else None
    if out is not None and main_process:
        check_writable_dir(out)
    train_config = config.train_config()
    seed_everything(config.seed)
    task = _load_task(config)
    if config.protocol == "base2new":
        task, new_task = base_new_split(task)
    index_dir = config.index_dir or (str(out / "indices") if out is not None else None)
    train_task = few_shot_task(task, config.shots, config.seed, index_dir) if config.shots else task
    backbone = create_backbone(config.backbone)
    seed_everything(config.seed)
    method = create_method(config.method, backbone, train_task.labels, **config.method_options)
    if out is not None and main_process:
        _write_config(out, config, train_config, backbone.backbone_id)
    trainer = Trainer(method, train_config, out_dir=out)
    fit = trainer.fit(train_task)
    common = {"train_seconds": round(fit.train_seconds, 3), "val_accuracy": fit.val_accuracy, "steps": fit.steps}
    device = trainer.device
    eval_kwargs = {"batch_size": train_config.eval_batch_size, "device": device, "cache_dir": train_config.cache_dir,
                   "num_workers": train_config.resolved_num_workers()}
    records = []
    if config.protocol == "fewshot":
        records.append(_record(config, task, "test", evaluate(method, task.test, **eval_kwargs), **common))
    elif config.protocol == "base2new":
        records.append(_record(config, task, "base", evaluate(method, task.test, **eval_kwargs),
                               saw_new_classnames=False, **common))
        transferred = transfer_to_labels(method, new_task.labels)
        new_accuracy = evaluate(transferred, new_task.test, **eval_kwargs) if transferred is not None else None
        records.append(_record(config, new_task, "new", new_accuracy, saw_new_classnames=False,
                               note=None if transferred else "class-dependent parameters: cannot score new classes",
                               **common))
    else:
        records.append(_record(config, task, "source", evaluate(method, task.test, **eval_kwargs), **common))
        for target in config.targets:
            target_task = load_dataset(target["dataset"], root=target.get("root"), **target.get("options", {}))
            if target_task.labels.classnames != task.labels.classnames:
                raise VlpromptError(
                    f"Shift target '{target_task.name}' has other class names than the source '{task.name}'; a "
                    "domain-shift target must share the source's classes (same names, same order)."
                )
            records.append(_record(config, target_task, "target", evaluate(method, target_task.test, **eval_kwargs),
                                   source=task.name, **common))
    if out is not None and main_process:
        atomic_write_json(out / RESULTS_NAME, records)
        write_model_card(out)  # the run folder's README.md now shows these results
    return records


def _write_config(out: Path, config: RunConfig, train_config: TrainConfig, backbone_id: str) -> None:
    atomic_write_json(
        out / CONFIG_NAME,
        {
            "run": dataclasses.asdict(config),
            "train_resolved": dataclasses.asdict(train_config),
            "backbone_id": backbone_id,
            "vlprompt_version": __version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )


def run_config_from_dict(values: dict) -> RunConfig:
    return build_config(RunConfig, values, where="run")
