"""One run = one method x backbone x dataset x protocol x shots x seed, from a typed RunConfig.

The CLI, the demo and sweeps all go through ``run_experiment``; it saves the resolved config, the library
version and the backbone id beside every result, so each number in a table traces to its run folder. The run
folder's rules (artifacts/run_dir.py): the same config resumes an unfinished run and leaves a finished one as it is; another
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlprompt.analysis.nmi import NMICallback, NMIOptions
from vlprompt.artifacts.card import write_model_card
from vlprompt.artifacts.files import LOCK_NAME
from vlprompt.artifacts.run_dir import RunDir, config_document, fingerprint_fields, mismatch_error
from vlprompt.backbones.registry import create_backbone
from vlprompt.core import distributed
from vlprompt.core.config import ValidatedConfig, build_config, option
from vlprompt.core.errors import ConfigError, VlpromptError
from vlprompt.core.io import check_writable_dir
from vlprompt.core.seeding import seed_everything
from vlprompt.data.base import LabelSpace, TaskData
from vlprompt.data.fewshot import base_new_split, few_shot_task
from vlprompt.data.registry import load_dataset
from vlprompt.eval.tasks import scores
from vlprompt.methods import import_all
from vlprompt.methods.base import METHODS, PromptMethod, create_method
from vlprompt.train.config import TrainConfig
from vlprompt.train.trainer import Trainer

log = logging.getLogger(__name__)

PROTOCOLS = ("fewshot", "base2new", "shift")


@dataclass
class TargetConfig(ValidatedConfig):
    """One domain-shift target of a run: a dataset with the source's class names, evaluated after training."""

    config_name = "run.targets"

    dataset: str = option(help="registered dataset name of the target")
    root: str | None = option(None, help="the target's data folder (default: the dataset's own location)")
    options: dict = option(help="dataset options of the target, as key=value of its loader", default_factory=dict)

    def as_mapping(self) -> dict:
        """The target as a run config writes it: only what was set (unset root and options stay out, so a
        target's stored form and fingerprint do not depend on which defaults it spelled out)."""
        values: dict = {"dataset": self.dataset}
        if self.root is not None:
            values["root"] = self.root
        if self.options:
            values["options"] = dict(self.options)
        return values


@dataclass
class RunConfig(ValidatedConfig):
    """One run, typed. At the YAML/CLI/Python edge ``train``, ``method_options``, ``nmi`` and ``targets`` may be
    given as mappings (and lists of mappings); construction resolves them into TrainConfig (the method's
    recommended settings under the given ones, ``seed`` from the run), the method's own config dataclass,
    NMIOptions and TargetConfig, so every later reader holds typed, validated objects."""

    config_name = "run"

    method: str = option("linear", help="registered method name (vlprompt list methods)")
    backbone: str = option("world:clip", help="backbone id (vlprompt list backbones)")
    dataset: str = option("world-object", help="registered dataset name (vlprompt list datasets)")
    root: str | None = option(None, help="the dataset's data folder (default: the dataset's own location)")
    dataset_options: dict = option(help="options of the dataset's loader, as key=value", default_factory=dict)
    method_options: Any = option(
        help="the method's options (its config dataclass; vlprompt list methods --options NAME)", default_factory=dict
    )
    protocol: str = option("fewshot", help="evaluation protocol", choices=PROTOCOLS)
    shots: int = option(
        16, help="training images per class (0 = the whole training split); validation gets min(shots, 4)",
        range=(0, None),
    )
    seed: int = option(1, help="seed of the few-shot sample, initialisation and training (sets train.seed)")
    targets: list = option(
        help="domain-shift targets (same class names): each {dataset, root, options}", default_factory=list
    )
    train: TrainConfig = option(
        help="training settings (TrainConfig fields) over the method's recommended ones", default_factory=dict
    )
    out: str | None = option(None, help="run folder (results, prompts, metrics); unset: nothing is written")
    index_dir: str | None = option(None, help="where few-shot index files live (default: <out>/indices)")
    preset: str = option("", help="the paper preset the run was built from (vlprompt.presets)")
    nmi: NMIOptions = option(help="NMI logging during training (VPT/SPT prompts)", default_factory=NMIOptions)

    def __post_init__(self) -> None:
        super().__post_init__()
        import_all()
        method = METHODS.get(self.method)  # raises the close-names error for a mistyped name
        if not isinstance(self.method_options, method.config_class):
            self.method_options = build_config(method.config_class, _mapping(self.method_options, "method_options"),
                                               where=f"method '{self.method}'")
        if isinstance(self.train, TrainConfig):
            if self.train.seed != self.seed:
                self.train = dataclasses.replace(self.train, seed=self.seed)
        else:
            values = {**method.train_defaults, **_mapping(self.train, "train"), "seed": self.seed}
            self.train = build_config(TrainConfig, values, where="train")
        if not isinstance(self.nmi, NMIOptions):
            self.nmi = build_config(NMIOptions, _mapping(self.nmi, "nmi"), where="run.nmi")
        self.targets = [_target(t, i) for i, t in enumerate(self.targets)]
        if self.protocol == "shift" and not self.targets:
            raise ConfigError("run.targets is empty: the 'shift' protocol needs at least one target dataset.")

    def train_config(self) -> TrainConfig:
        """The resolved training config (the method's recommended settings under the given ones)."""
        return self.train

    def as_dict(self) -> dict:
        """The run as config.json's ``run`` section stores it: method options and training settings resolved,
        ``nmi`` {} when off and targets as given, so folders written before the config was typed keep their
        fingerprint."""
        values = dataclasses.asdict(self)
        values["nmi"] = dataclasses.asdict(self.nmi) if self.nmi.enabled else {}
        values["targets"] = [target.as_mapping() for target in self.targets]
        return values


def _mapping(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"run.{name} must be a mapping of fields, got {value!r}.")
    return value


def _target(value: Any, index: int) -> TargetConfig:
    if isinstance(value, TargetConfig):
        return value
    if not isinstance(value, dict) or "dataset" not in value:
        raise ConfigError(f"run.targets[{index}] must be a mapping with a 'dataset' key (and optional 'root', "
                          "'options').")
    return build_config(TargetConfig, value, where=f"run.targets[{index}]")


def _resolve(root: str | None) -> str | None:
    return None if root is None else str(Path(root).expanduser().resolve())


def resolved_paths(config: RunConfig) -> RunConfig:
    """Dataset roots as absolute paths, so the folder evaluates from any directory."""
    targets = [dataclasses.replace(t, root=_resolve(t.root)) if t.root else t for t in config.targets]
    return dataclasses.replace(config, root=_resolve(config.root), targets=targets)


def run_fingerprint(config: RunConfig, train_config: TrainConfig) -> dict:
    """The result-defining fields with training and method options resolved (a default given explicitly is
    the same run as the default left out)."""
    return fingerprint_fields(config.as_dict(), dataclasses.asdict(train_config))


def _shots_used(task: TaskData) -> dict:
    """Training images per class actually used (a class with fewer images than ``shots`` gives all it has)."""
    counts = Counter(task.train.labels)
    per_class = [counts.get(label, 0) for label in range(task.labels.sampling_classes)]
    return {"shots_used_min": min(per_class), "shots_used_max": max(per_class)}


def _record(config: RunConfig, task: TaskData, split: str, accuracy: float | None = None, **extra: Any) -> dict:
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
    own = clone.trained_tensors()
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
    method = create_method(config.method, backbone, train_task.labels, **dataclasses.asdict(config.method_options))
    if run_dir is not None:
        document = config_document(config.as_dict(), dataclasses.asdict(train_config),
                                   backbone.backbone_id, given_root)
        run_dir.write_config(document, fields)
    callbacks = [NMICallback(**dataclasses.asdict(config.nmi))] if config.nmi.enabled else []
    trainer = Trainer(method, train_config, out_dir=out, callbacks=callbacks, fingerprint=fields)
    fit = trainer.fit(train_task)
    common = {"train_seconds": round(fit.train_seconds, 3), "val_accuracy": fit.val_accuracy, "steps": fit.steps,
              **_shots_used(train_task)}
    device = trainer.device
    eval_kwargs = {"batch_size": train_config.eval_batch_size, "device": device, "cache_dir": train_config.cache_dir,
                   "num_workers": train_config.resolved_num_workers()}
    records = []
    if config.protocol == "fewshot":
        records.append(_record(config, task, "test", **scores(method, task.test, **eval_kwargs), **common))
    elif config.protocol == "base2new":
        records.append(_record(config, task, "base", **scores(method, task.test, **eval_kwargs),
                               saw_new_classnames=False, **common))
        transferred = transfer_to_labels(method, new_task.labels)
        new_accuracy = scores(transferred, new_task.test, **eval_kwargs)["accuracy"] if transferred is not None else None
        records.append(_record(config, new_task, "new", new_accuracy, saw_new_classnames=False,
                               note=None if transferred else "class-dependent parameters: cannot score new classes",
                               **common))
    else:
        records.append(_record(config, task, "source", **scores(method, task.test, **eval_kwargs), **common))
        for target in config.targets:
            target_task = load_dataset(target.dataset, root=target.root, **target.options)
            if target_task.labels.classnames != task.labels.classnames:
                raise VlpromptError(
                    f"Shift target '{target_task.name}' has other class names than the source '{task.name}'; a "
                    "domain-shift target must share the source's classes (same names, same order)."
                )
            records.append(_record(config, target_task, "target", **scores(method, target_task.test, **eval_kwargs),
                                   source=task.name, **common))
    if run_dir is not None:
        run_dir.write_results(records)
        write_model_card(run_dir.path)  # the run folder's README.md now shows these results
    return records


def run_config_from_dict(values: dict) -> RunConfig:
    from vlprompt.presets import apply_preset

    return build_config(RunConfig, apply_preset(values), where="run")
