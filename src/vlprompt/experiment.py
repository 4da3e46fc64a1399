"""One run = one method x backbone x dataset x protocol x shots x seed, from a typed RunConfig.

The CLI, the demo and sweeps all go through ``run_experiment``; it saves the resolved config, the library
version and the backbone id beside every result, so each number in a table traces to its run folder. The run
folder's rules (run_dir.py): the same config resumes an unfinished run and leaves a finished one as it is; another
config is refused unless ``restart`` (unfinished) or ``overwrite`` (finished; replaced only once the new run has
finished); one process at a time trains a folder.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlprompt import distributed
from vlprompt.analysis.nmi import NMICallback, split_nmi_options
from vlprompt.artifacts.card import write_model_card
from vlprompt.backbones.registry import create_backbone
from vlprompt.config_utils import build_config, check_choice, check_range
from vlprompt.data.base import LabelSpace, TaskData
from vlprompt.data.fewshot import base_new_split, few_shot_task
from vlprompt.data.registry import load_dataset
from vlprompt.errors import ConfigError, VlpromptError
from vlprompt.io_utils import check_writable_dir
from vlprompt.methods import import_all
from vlprompt.methods.base import METHODS, PromptMethod, create_method
from vlprompt.run_dir import LOCK_NAME, RunDir, config_document, fingerprint_fields, mismatch_error
from vlprompt.seeding import seed_everything
from vlprompt.train.config import TrainConfig
from vlprompt.train.trainer import Trainer, evaluate

log = logging.getLogger(__name__)

PROTOCOLS = ("fewshot", "base2new", "shift")


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
    # The paper preset the run was built from (vlprompt.presets; expanded by run_config_from_dict).
    preset: str = ""
    # NMI logging during training (analysis/nmi.py NMIOptions: every, images, normalization); the VPT/SPT
    # method_options keys nmi_every, nmi_images, nmi_normalization are moved here.
    nmi: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("run", "protocol", self.protocol, PROTOCOLS)
        check_range("run", "shots", self.shots, 0)
        import_all()
        METHODS.get(self.method)  # raises the close-names error for a mistyped name
        self.method_options, self.nmi = split_nmi_options(self.method_options, self.nmi)
        if self.protocol == "shift" and not self.targets:
            raise ConfigError("run.targets is empty: the 'shift' protocol needs at least one target dataset.")
        for i, target in enumerate(self.targets):
            if not isinstance(target, dict) or "dataset" not in target:
                raise ConfigError(f"run.targets[{i}] must be a mapping with a 'dataset' key (and optional 'root', "
                                  "'options').")

    def train_config(self) -> TrainConfig:
        defaults = dict(METHODS.get(self.method).train_defaults)
        return build_config(TrainConfig, {**defaults, **self.train, "seed": self.seed}, where="train")


def _resolve(root: str | None) -> str | None:
    return None if root is None else str(Path(root).expanduser().resolve())


def resolved_paths(config: RunConfig) -> RunConfig:
    """Dataset roots as absolute paths, so the folder evaluates from any directory."""
    targets = [{**t, "root": _resolve(t.get("root"))} if t.get("root") else t for t in config.targets]
    return dataclasses.replace(config, root=_resolve(config.root), targets=targets)


def run_fingerprint(config: RunConfig, train_config: TrainConfig) -> dict:
    """The result-defining fields with training and method options resolved (a default given explicitly is
    the same run as the default left out)."""
    method_config = build_config(METHODS.get(config.method).config_class, config.method_options,
                                 where=f"method '{config.method}'")
    run = {**dataclasses.asdict(config), "method_options": dataclasses.asdict(method_config)}
    return fingerprint_fields(run, dataclasses.asdict(train_config))


def _shots_used(task: TaskData) -> dict:
    """Training images per class actually used (a class with fewer images than ``shots`` gives all it has)."""
    counts = Counter(task.train.labels)
    per_class = [counts.get(label, 0) for label in range(task.labels.num_classes)]
    return {"shots_used_min": min(per_class), "shots_used_max": max(per_class)}


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


def run_experiment(config: RunConfig, *, restart: bool = False, overwrite: bool = False) -> list[dict]:
    """Train and evaluate one run; returns result records (also written to <out>/results.json).

    With ``out`` set, the run folder decides what happens: a finished run of the same config is returned as it
    is (nothing trains), an unfinished one resumes, another config raises RunConfigMismatch (unless
    ``restart``/``overwrite``), a folder locked by a live process raises RunLockedError."""
    distributed.init_from_env()
    given_root = config.root
    config = resolved_paths(config)
    train_config = config.train_config()
    if config.out is None:
        return _run(config, train_config, None, None)
    out = Path(config.out)
    run_dir = RunDir(out)
    fields = run_fingerprint(config, train_config)
    with ExitStack() as held:  # rank 0's locks, held until its training ends

        def decide() -> dict:
            """Rank 0 alone looks at the folder, changes it, then tells the others (broadcast below)."""
            check_writable_dir(out)
            held.enter_context(run_dir.lock())
            remove_leftovers(out)
            stored = run_dir.stored_fingerprint()
            if run_dir.is_finished():
                if stored == fields and not overwrite:
                    log.warning("'%s' already holds this run, finished with the same config: nothing to do", out)
                    return {"action": "done", "records": run_dir.read_results()}
                if not overwrite:
                    raise mismatch_error(out, stored or {}, fields, finished=True)
                staging = RunDir(staging_path(out))
                held.enter_context(staging.lock())
                empty_folder(staging.path)
                return {"action": "replace", "out": str(staging.path)}
            if stored is not None and stored != fields and not (restart or overwrite):
                raise mismatch_error(out, stored, fields, finished=False)
            if restart or overwrite or stored != fields:
                # Progress discarded on request, or left by an attempt without a config.json to check it against.
                run_dir.clear_attempt()
                return {"action": "start", "out": str(out)}
            return {"action": "resume", "out": str(out)}

        decision = distributed.decided_by_rank_zero(decide)
        if decision["action"] == "done":
            return decision["records"]
        if not distributed.is_main_process():  # trains beside rank 0 and writes nothing
            return _run(config, train_config, None, fields, out=Path(decision["out"]))
        if decision["action"] == "replace":
            return _replace_finished(config, train_config, fields, given_root, RunDir(decision["out"]))
        return _run(config, train_config, run_dir, fields, given_root)


def staging_path(out: Path) -> Path:
    """Where --overwrite trains the replacement of a finished run, beside it."""
    return out.parent / f".{out.name}.overwrite"


def empty_folder(folder: Path) -> None:
    """Remove everything in ``folder`` but its lock file (held by this process: deleting it would let another
    process lock a new file of the same name)."""
    for entry in folder.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def remove_leftovers(out: Path) -> None:
    """What a killed ``--overwrite`` of ``out`` left behind: its staging folder (killed while training) and
    the replaced run moved aside (killed between the swap and the clean-up). Called with ``out``'s lock held,
    which every overwrite of ``out`` holds for its whole duration, so nothing found here is in use."""
    staging = staging_path(out)
    if staging.exists():
        log.warning("removing '%s', left by an --overwrite of '%s' that was stopped before it finished", staging, out)
        shutil.rmtree(staging, ignore_errors=True)
    if RunDir(out).is_finished():
        for trash in out.parent.glob(f".{out.name}.replaced-*"):
            shutil.rmtree(trash, ignore_errors=True)


def _replace_finished(config: RunConfig, train_config: TrainConfig, fields: dict, given_root: str | None,
                      staging: RunDir) -> list:
    """--overwrite of a finished run: train into a staging folder beside it (locked and emptied by the caller),
    then swap the folders, so the old run stays complete until the new one is."""
    out = Path(config.out)
    records = _run(config, train_config, staging, fields, given_root)
    trash = out.parent / f".{out.name}.replaced-{os.getpid()}"
    os.replace(out, trash)
    os.replace(staging.path, out)
    shutil.rmtree(trash, ignore_errors=True)
    log.warning("replaced the finished run in '%s' (--overwrite)", out)
    return records


def _run(config: RunConfig, train_config: TrainConfig, run_dir: RunDir | None, fields: dict | None,
         given_root: str | None = None, out: Path | None = None) -> list[dict]:
    """Train and evaluate; files go to ``run_dir`` (rank 0), or nowhere with ``out`` naming the folder whose
    resume state a rank > 0 reads (the one rank 0 trains)."""
    if out is None:
        out = run_dir.path if run_dir is not None else (Path(config.out) if config.out else None)
    seed_everything(config.seed)
    task = _load_task(config)
    if config.protocol == "base2new":
        task, new_task = base_new_split(task)
    index_dir = config.index_dir or (str(RunDir(out).indices) if out is not None else None)
    train_task = few_shot_task(task, config.shots, config.seed, index_dir) if config.shots else task
    backbone = create_backbone(config.backbone)
    seed_everything(config.seed)
    method = create_method(config.method, backbone, train_task.labels, **config.method_options)
    if run_dir is not None:
        document = config_document(dataclasses.asdict(config), dataclasses.asdict(train_config),
                                   backbone.backbone_id, given_root)
        run_dir.write_config(document, fields)
    callbacks = [NMICallback(**config.nmi)] if config.nmi else []
    trainer = Trainer(method, train_config, out_dir=out, callbacks=callbacks, fingerprint=fields)
    fit = trainer.fit(train_task)
    common = {"train_seconds": round(fit.train_seconds, 3), "val_accuracy": fit.val_accuracy, "steps": fit.steps,
              **_shots_used(train_task)}
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
    if run_dir is not None:
        run_dir.write_results(records)
        write_model_card(run_dir.path)  # the run folder's README.md now shows these results
    return records


def run_config_from_dict(values: dict) -> RunConfig:
    from vlprompt.presets import apply_preset

    return build_config(RunConfig, apply_preset(values), where="run")
