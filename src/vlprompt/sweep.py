"""Sweeps: a grid of runs (methods x datasets x protocols x shots x seeds x hyper-parameters), a folder each.

A sweep is planned into ``RunSpec``s before anything trains. Every run gets a stable folder name (readable
parts plus a short hash of its resolved RunConfig), so re-running a sweep skips the runs whose results.json
exists and resumes the interrupted ones (the trainer's resume state lives in the run folder). Runs go one
after another in this process (``workers=1``) or as separate processes (``python -m vlprompt.sweep FOLDER``),
at most ``workers`` at once. A failing run writes ``error.txt`` in its folder and the others go on.

VTAB-1k is a sweep-level protocol in two stages. *select*: every hyper-parameter combination trains on
train800 and is scored on val200, through a task view whose test split IS the val split and which holds no
reference to the real test split (``selection_view``); the best combination is chosen from those scores
only. *final*: the chosen combination trains on train800val200 and is tested on test, over several seeds.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import itertools
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt.config_utils import build_config, check_choice, deep_merge, load_yaml_mapping
from vlprompt.data.base import ImageDataset, TaskData
from vlprompt.data.registry import DATASETS, load_dataset, register_dataset
from vlprompt.errors import ConfigError, DataError, VlpromptError
from vlprompt.experiment import PROTOCOLS, RESULTS_NAME, run_config_from_dict
from vlprompt.io_utils import atomic_write_json, atomic_write_text, check_writable_dir
from vlprompt.methods import import_all, list_methods
from vlprompt.methods.base import METHODS
from vlprompt.train.config import TrainConfig

log = logging.getLogger(__name__)

SWEEP_PROTOCOLS = (*PROTOCOLS, "vtab")
STAGES = ("run", "select", "final")
SPEC_NAME = "sweep.json"
ERROR_NAME = "error.txt"
LOG_NAME = "log.txt"
SUMMARY_NAME = "summary.json"
SELECTION_NAME = "vtab_selection.json"
RUNS_DIR = "runs"
INDEX_DIR = "indices"
FEATURES_DIR = "features"
VTAB_SELECT_DATASET = "vtab-select"
VTAB_FINAL_DATASET = "vtab-final"
# RunConfig fields a grid may vary (the others are set by the sweep's own axes).
GRID_ROOTS = ("backbone", "train", "method_options", "dataset_options")


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------
@dataclass
class MethodEntry:
    """One method of the grid, with its own options, training overrides and hyper-parameter grid."""

    name: str
    method_options: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    # How the method is named in report tables (default: the method name, plus the grid values).
    label: str | None = None


@dataclass
class DatasetEntry:
    """One dataset of the grid; ``protocols``/``shots``/``seeds`` override the sweep's for this dataset."""

    dataset: str
    root: str | None = None
    options: dict = field(default_factory=dict)
    protocols: list[str] | None = None
    shots: list[int] | None = None
    seeds: list[int] | None = None
    # Domain shift: target datasets sharing the classes, each {"dataset": ..., "root": ..., "options": {...}}.
    targets: list = field(default_factory=list)


@dataclass
class VtabConfig:
    """VTAB-1k stages: the seed of the selection runs and the seeds of the final runs."""

    select_seed: int = 1
    final_seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])


@dataclass
class SweepConfig:
    """A grid of runs. ``all`` in ``methods`` stands for every registered method not listed with its own
    settings. ``grid`` maps a dotted RunConfig field (``train.lr``, ``train.weight_decay``,
    ``method_options.num_tokens``, ``backbone``...) to its values; a ``method_options`` key applies only to
    the methods whose config has that field. The lr/256*batch rule is ``train: {scale_lr_by_batch: true}``."""

    name: str = "sweep"
    backbone: str = "world:clip"
    methods: list = field(default_factory=list)
    datasets: list = field(default_factory=list)
    protocols: list[str] = field(default_factory=lambda: ["fewshot"])
    shots: list[int] = field(default_factory=lambda: [16])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    train: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    vtab: dict = field(default_factory=dict)
    # Modules imported before any run (in every worker): plugins that register datasets or backbones.
    imports: list[str] = field(default_factory=list)
    # Share frozen image features between runs (<out>/features) unless a run sets train.cache_dir itself: the
    # cache is keyed by backbone weights and data, so every frozen-feature method encodes each split once.
    feature_cache: bool = True

    def __post_init__(self) -> None:
        for module in self.imports:
            _import_plugin(module, "sweep.imports")
        import_all()
        if isinstance(self.methods, str):
            self.methods = [self.methods]
        if "all" in self.methods:
            # 'all' stands for every registered method that the list does not name with its own settings.
            named = {m["name"] if isinstance(m, dict) else m for m in self.methods if m != "all"}
            index = self.methods.index("all")
            rest = [m for m in self.methods[index + 1 :] if m != "all"]
            self.methods = self.methods[:index] + [m for m in list_methods() if m not in named] + rest
        if not self.methods:
            raise ConfigError(
                "sweep.methods is empty: list method names (or 'all' for every registered method)."
            )
        if not self.datasets:
            raise ConfigError(
                "sweep.datasets is empty: list at least one dataset (a name or {dataset: ..., ...})."
            )
        self.method_entries = [_method_entry(m, i) for i, m in enumerate(self.methods)]
        self.dataset_entries = [_dataset_entry(d, i) for i, d in enumerate(self.datasets)]
        self.vtab_config = build_config(VtabConfig, self.vtab, where="sweep.vtab")
        for protocol in self.protocols:
            check_choice("sweep", "protocols", protocol, SWEEP_PROTOCOLS)
        for i, entry in enumerate(self.dataset_entries):
            for protocol in entry.protocols or []:
                check_choice(f"sweep.datasets[{i}]", "protocols", protocol, SWEEP_PROTOCOLS)
        _check_grid(self.grid, "sweep.grid")
        for i, entry in enumerate(self.method_entries):
            _check_grid(entry.grid, f"sweep.methods[{i}].grid")
        build_config(TrainConfig, {k: v for k, v in self.train.items() if k != "seed"}, where="sweep.train")


def _import_plugin(module: str, where: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"{where}: cannot import module '{module}' ({error}). Check the name and that it is on "
            "PYTHONPATH."
        ) from None


def _method_entry(value: Any, index: int) -> MethodEntry:
    where = f"sweep.methods[{index}]"
    entry = build_config(
        MethodEntry, {"name": value} if isinstance(value, str) else _mapping(value, where), where
    )
    METHODS.get(entry.name)
    return entry


def _dataset_entry(value: Any, index: int) -> DatasetEntry:
    where = f"sweep.datasets[{index}]"
    return build_config(
        DatasetEntry, {"dataset": value} if isinstance(value, str) else _mapping(value, where), where
    )


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a name or a mapping, not {value!r}.")
    return value


def _check_grid(grid: Any, where: str) -> None:
    if not isinstance(grid, dict):
        raise ConfigError(f"{where} must map dotted RunConfig fields (e.g. train.lr) to lists of values.")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, values in grid.items():
        root, _, rest = str(key).partition(".")
        if root not in GRID_ROOTS:
            raise ConfigError(
                f"{where}: unknown key '{key}'; a grid key starts with one of {list(GRID_ROOTS)} "
                "(e.g. train.lr, method_options.num_tokens)."
            )
        if root == "backbone" and rest:
            raise ConfigError(f"{where}: '{key}': backbone takes no sub-field; write 'backbone'.")
        if root != "backbone" and not rest:
            raise ConfigError(f"{where}: '{key}' needs a sub-field, e.g. {root}.lr.")
        if root == "train" and rest.split(".")[0] not in train_fields:
            raise ConfigError(f"{where}: unknown key '{key}'; '{rest}' is not a TrainConfig field.")
        if root == "train" and rest == "seed":
            raise ConfigError(f"{where}: '{key}': seeds are the sweep's own axis; use seeds: [...].")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: '{key}' must be a non-empty list of values, not {values!r}.")


def load_sweep_config(path: str | Path, overrides: dict | None = None) -> SweepConfig:
    """Read a sweep YAML; any invalid or unknown key is an error naming the key and the file.

    ``overrides`` (e.g. ``{"train": {"epochs": 2}}`` from ``train.epochs=2`` on the command line) are merged
    into the file's mapping, nested mappings key by key."""
    path = Path(path)
    values = load_yaml_mapping(path, "Sweep config", "name:, methods:, datasets:, ...")
    values = deep_merge(values, overrides or {})
    try:
        return build_config(SweepConfig, values, where="sweep")
    except VlpromptError as error:
        raise type(error)(f"In sweep config '{path}': {error}") from None


# ----------------------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    """One planned run: the RunConfig fields (without ``out``), its sweep stage and how tables name it."""

    run: dict
    stage: str = "run"
    protocol: str = "fewshot"  # the sweep protocol (vtab for both VTAB stages)
    variant: str = ""
    label: str = ""
    group: str = ""  # VTAB: runs competing in one selection
    point: dict = field(default_factory=dict)  # the grid values of this run
    folder: str = ""

    def __post_init__(self) -> None:
        if not self.folder:
            self.folder = run_folder_name(self)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")


def run_hash(run: dict, stage: str) -> str:
    canonical = json.dumps({"run": run, "stage": stage}, sort_keys=True, default=str)
    return hashlib.sha1(canonical.encode()).hexdigest()[:8]


def run_folder_name(spec: RunSpec) -> str:
    """Readable and stable: protocol, dataset, method, variant, shots, seed, then a hash of the config."""
    run = spec.run
    dataset = run["dataset"]
    if spec.protocol == "vtab":
        dataset = run["dataset_options"]["source"]
    parts = [
        spec.protocol if spec.stage == "run" else f"{spec.protocol}-{spec.stage}",
        dataset,
        run["method"],
    ]
    if spec.variant:
        parts.append(spec.variant)
    if spec.protocol != "vtab":
        parts.append(f"{run['shots']}shot")
    parts.append(f"seed{run['seed']}")
    readable = _slug("__".join(parts))[:150]
    return f"{readable}__{run_hash(run, spec.stage)}"


def _set_dotted(values: dict, key: str, value: Any) -> None:
    node = values
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _grid_points(config: SweepConfig, method: MethodEntry) -> list[dict]:
    """The product of the sweep grid (method_options keys only where the method has the field) and the
    method's own grid, in a fixed order."""
    option_fields = {f.name for f in dataclasses.fields(METHODS.get(method.name).config_class)}
    grid = {}
    for key, values in config.grid.items():
        root, _, rest = key.partition(".")
        if root == "method_options" and rest.split(".")[0] not in option_fields:
            continue
        grid[key] = values
    grid.update(method.grid)
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _variant(point: dict) -> str:
    return ",".join(f"{key.rsplit('.', 1)[-1]}={_format_value(value)}" for key, value in point.items())


def _base_run(config: SweepConfig, method: MethodEntry, entry: DatasetEntry, point: dict) -> dict:
    run: dict = {
        "method": method.name,
        "backbone": config.backbone,
        "dataset": entry.dataset,
        "root": entry.root,
        "dataset_options": copy.deepcopy(entry.options),
        "method_options": copy.deepcopy(method.method_options),
        "train": copy.deepcopy({**config.train, **method.train}),
    }
    for key, value in point.items():
        _set_dotted(run, key, value)
    return run


def _label(method: MethodEntry, variant: str) -> str:
    if method.label:
        return method.label
    return f"{method.name} ({variant})" if variant else method.name


def plan_sweep(config: SweepConfig) -> list[RunSpec]:
    """All runs of the sweep except the VTAB final stage (which depends on the selection), validated."""
    specs: list[RunSpec] = []
    for entry in config.dataset_entries:
        for protocol in entry.protocols or config.protocols:
            for method in config.method_entries:
                for point in _grid_points(config, method):
                    variant = _variant(point)
                    base = _base_run(config, method, entry, point)
                    if protocol == "vtab":
                        # Variants compete in the selection: the table row is the method, not the variant.
                        row = method.label or method.name
                        specs.append(
                            _vtab_spec(base, "select", config.vtab_config.select_seed, variant, row, point)
                        )
                        continue
                    for shots in entry.shots or config.shots:
                        for seed in entry.seeds or config.seeds:
                            run = {
                                **base,
                                "protocol": protocol,
                                "shots": shots,
                                "seed": seed,
                                "targets": list(entry.targets) if protocol == "shift" else [],
                            }
                            specs.append(
                                RunSpec(run, "run", protocol, variant, _label(method, variant), point=point)
                            )
    seen: dict[str, RunSpec] = {}
    for spec in specs:
        _validate_run(spec)
        if spec.folder in seen:
            raise ConfigError(
                f"The sweep plans the run '{spec.folder}' twice (the same method, dataset, protocol, "
                "shots, seed and options); remove the duplicate entry."
            )
        seen[spec.folder] = spec
    return specs


def _vtab_spec(base: dict, stage: str, seed: int, variant: str, label: str, point: dict) -> RunSpec:
    source = {"source": base["dataset"], "options": base["dataset_options"]}
    run = {
        **base,
        "dataset": VTAB_SELECT_DATASET if stage == "select" else VTAB_FINAL_DATASET,
        "dataset_options": source,
        "protocol": "fewshot",
        "shots": 0,
        "seed": seed,
        "targets": [],
    }
    group = "|".join([base["dataset"], json.dumps(base["dataset_options"], sort_keys=True), label])
    return RunSpec(run, stage, "vtab", variant, label, group, point)


def _validate_run(spec: RunSpec) -> None:
    try:
        config = run_config_from_dict(spec.run)
        config.train_config()
        build_config(
            METHODS.get(config.method).config_class, config.method_options, where=f"method '{config.method}'"
        )
    except VlpromptError as error:
        raise type(error)(f"Run '{spec.folder}': {error}") from None


_TEXT_TOWER_CACHE: dict[str, bool] = {}


def _has_text_tower(backbone: str) -> bool:
    if backbone not in _TEXT_TOWER_CACHE:
        from vlprompt.backbones.registry import create_backbone

        _TEXT_TOWER_CACHE[backbone] = create_backbone(backbone).text is not None
    return _TEXT_TOWER_CACHE[backbone]


def incompatibility(spec: RunSpec) -> str | None:
    """Why a run cannot run on its backbone (a text method on an image-only backbone), or None."""
    method = METHODS.get(spec.run["method"])
    if method.needs_text_tower and not _has_text_tower(spec.run["backbone"]):
        return (
            f"method '{spec.run['method']}' needs a text tower; backbone '{spec.run['backbone']}' "
            "has only an image tower"
        )
    return None


# ----------------------------------------------------------------------------------------------------------
# VTAB stages as task views
# ----------------------------------------------------------------------------------------------------------
def selection_view(task: TaskData) -> TaskData:
    """Train on train800, score on val200: the view's test split IS the val split, and the view keeps no
    reference to the real test split, so nothing trained or scored through it can read test."""
    if task.val is None:
        raise DataError(
            f"Task '{task.name}' has no val split: VTAB selection scores on val200 and never on test. "
            "Give the dataset a val split (val200.txt for VTAB-1k)."
        )
    meta = {**task.meta, "vtab_stage": "select", "scored_split": task.val.name or "val"}
    return TaskData(task.name, task.labels, task.train, task.val, None, meta)


class _UnionLoader:
    """Loads (part, source) pairs with the part's own loader; picklable for DataLoader workers."""

    def __init__(self, loaders: list[Callable]) -> None:
        self.loaders = loaders

    def __call__(self, source: tuple) -> Any:
        part, inner = source
        return self.loaders[part](inner)


def union(first: ImageDataset, second: ImageDataset, name: str) -> ImageDataset:
    """train800 + val200 = train800val200 (ids kept; each item loaded by its own split's loader)."""
    duplicates = set(first.ids) & set(second.ids)
    if duplicates:
        raise DataError(
            f"'{first.name}' and '{second.name}' share items (e.g. {min(duplicates)!r}); "
            "train800 and val200 must be disjoint."
        )
    sources = [(0, s) for s in first.sources] + [(1, s) for s in second.sources]
    return ImageDataset(
        sources,
        first.labels + second.labels,
        _UnionLoader([first.load, second.load]),
        first.transform,
        name,
        first.ids + second.ids,
    )


def final_view(task: TaskData) -> TaskData:
    """Train on train800val200, test on test, with no val split (nothing is selected in the final training).

    A task loaded as VTAB's final split (no val, ``meta["vtab_split"] == "final"``) already trains on
    train800val200; otherwise train800val200 is the union of the task's train and val splits."""
    if task.val is None and task.meta.get("vtab_split") == "final":
        trainval = task.train
    elif task.val is None:
        raise DataError(f"Task '{task.name}' has no val split to join to train for the final VTAB stage.")
    else:
        trainval = union(task.train, task.val, f"{task.train.name}+{task.val.name}")
    return TaskData(task.name, task.labels, trainval, task.test, None, {**task.meta, "vtab_stage": "final"})


def _is_vtab_format(name: str) -> bool:
    return name == "vtab" or name.startswith("vtab:")


def _stage_loader(stage: str, view: Callable[[TaskData], TaskData]) -> Callable[..., TaskData]:
    def load(root: str | None = None, source: str = "", options: dict | None = None) -> TaskData:
        if not source:
            raise ConfigError("dataset_options.source is empty: name the VTAB task's dataset.")
        options = dict(options or {})
        if _is_vtab_format(source):
            # The VTAB-1k reader picks the split files of a stage itself (select: train800/val200; final:
            # train800val200).
            options["split"] = stage
        return view(load_dataset(source, root=root, **options))

    load.__doc__ = view.__doc__
    return load


for _name, _stage, _view in (
    (VTAB_SELECT_DATASET, "select", selection_view),
    (VTAB_FINAL_DATASET, "final", final_view),
):
    if _name not in DATASETS:
        register_dataset(_name)(_stage_loader(_stage, _view))


def select_best(specs: list[RunSpec], out_dir: Path) -> dict[str, RunSpec | None]:
    """The best selection run per group by its val200 score (the only score a selection run has)."""
    chosen: dict[str, RunSpec | None] = {}
    scores: dict[str, float] = {}
    for spec in specs:
        if spec.stage != "select":
            continue
        chosen.setdefault(spec.group, None)
        path = out_dir / RUNS_DIR / spec.folder / RESULTS_NAME
        if not path.exists():
            continue
        accuracy = json.loads(path.read_text(encoding="utf-8"))[0]["accuracy"]
        if accuracy is not None and accuracy > scores.get(spec.group, -math.inf):
            scores[spec.group] = accuracy
            chosen[spec.group] = spec
    return chosen


def final_specs(config: SweepConfig, chosen: dict[str, RunSpec | None]) -> list[RunSpec]:
    """The chosen combination of each group, trained on train800val200 and tested, once per final seed."""
    specs = []
    for best in chosen.values():
        if best is None:
            continue
        base = {k: v for k, v in best.run.items() if k not in ("protocol", "shots", "seed", "targets")}
        base["dataset"] = best.run["dataset_options"]["source"]
        base["dataset_options"] = best.run["dataset_options"]["options"]
        for seed in config.vtab_config.final_seeds:
            specs.append(_vtab_spec(base, "final", seed, best.variant, best.label, best.point))
    return specs


# ----------------------------------------------------------------------------------------------------------
# Execution
# ----------------------------------------------------------------------------------------------------------
def _write_spec(folder: Path, spec: RunSpec, config: SweepConfig) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SPEC_NAME
    atomic_write_json(
        path,
        {
            "sweep": config.name,
            "stage": spec.stage,
            "protocol": spec.protocol,
            "variant": spec.variant,
            "label": spec.label,
            "group": spec.group,
            "point": spec.point,
            "imports": list(config.imports),
            "feature_cache": config.feature_cache,
            "run": spec.run,
        },
    )
    return path


def execute_run(folder: str | Path) -> bool:
    """Run the spec in ``folder``/sweep.json; on failure write error.txt there and return False."""
    folder = Path(folder)
    spec = json.loads((folder / SPEC_NAME).read_text(encoding="utf-8"))
    error_path = folder / ERROR_NAME
    if error_path.exists():
        error_path.unlink()
    try:
        for module in spec.get("imports", []):
            _import_plugin(module, "sweep.imports")
        from vlprompt.experiment import run_experiment

        # Sweep-wide folders are set here, not in the run's hashed config, so a moved sweep keeps its names.
        run = dict(spec["run"])
        run["index_dir"] = run.get("index_dir") or str(folder.parent.parent / INDEX_DIR)
        if spec.get("feature_cache") and not run["train"].get("cache_dir"):
            run["train"] = {**run["train"], "cache_dir": str(folder.parent.parent / FEATURES_DIR)}
        run_experiment(run_config_from_dict({**run, "out": str(folder)}))
    except Exception as error:  # noqa: BLE001 - any failure of one run is recorded and must not stop the sweep
        # First line: what went wrong (the sweep summary shows it); then the traceback of anything unexpected.
        detail = "" if isinstance(error, VlpromptError) else "\n" + traceback.format_exc()
        atomic_write_text(error_path, f"{type(error).__name__}: {' '.join(str(error).split())}\n{detail}")
        log.error(
            "run %s failed: %s",
            folder.name,
            str(error).splitlines()[0] if str(error) else type(error).__name__,
        )
        return False
    return True


def _worker_env(workers: int) -> dict:
    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    return env


def _run_all(folders: list[Path], workers: int) -> dict[str, bool]:
    """Run folders serially in this process (workers=1) or as up to ``workers`` subprocesses."""
    outcome: dict[str, bool] = {}
    if workers <= 1:
        for folder in folders:
            log.info("sweep: running %s", folder.name)
            outcome[folder.name] = execute_run(folder)
        return outcome
    pending = list(folders)
    running: dict[subprocess.Popen, Path] = {}
    env = _worker_env(workers)
    try:
        while pending or running:
            while pending and len(running) < workers:
                folder = pending.pop(0)
                log.info("sweep: starting %s", folder.name)
                # The child writes to its own copy of the log's file descriptor.
                with open(folder / LOG_NAME, "w", encoding="utf-8") as handle:
                    process = subprocess.Popen(
                        [sys.executable, "-m", "vlprompt.sweep", str(folder)],
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                running[process] = folder
            time.sleep(0.1)
            for process in [p for p in running if p.poll() is not None]:
                folder = running.pop(process)
                outcome[folder.name] = process.returncode == 0 and (folder / RESULTS_NAME).exists()
                if not outcome[folder.name] and not (folder / ERROR_NAME).exists():
                    atomic_write_text(
                        folder / ERROR_NAME,
                        f"worker exited with status {process.returncode}; see {LOG_NAME}\n",
                    )
    finally:
        for process in running:
            process.terminate()
            process.wait()
    return outcome


def _execute(specs: list[RunSpec], config: SweepConfig, runs_dir: Path, workers: int, summary: dict) -> None:
    todo: list[Path] = []
    for spec in specs:
        folder = runs_dir / spec.folder
        summary["planned"] += 1
        reason = incompatibility(spec)
        if reason is not None:
            summary["skipped"].append({"run": spec.folder, "reason": reason})
            continue
        if (folder / RESULTS_NAME).exists():
            summary["finished_before"].append(spec.folder)
            continue
        _write_spec(folder, spec, config)
        todo.append(folder)
    for name, ok in _run_all(todo, workers).items():
        if ok:
            summary["ran"].append(name)
        else:
            error = (runs_dir / name / ERROR_NAME).read_text(encoding="utf-8").strip().splitlines()
            summary["failed"].append({"run": name, "error": error[0] if error else "unknown error"})


def run_sweep(config: SweepConfig, out_dir: str | Path, workers: int = 1) -> dict:
    """Run every planned run not yet finished; returns (and writes to <out>/summary.json) what happened."""
    out = check_writable_dir(out_dir)
    if workers < 1:
        raise ConfigError(f"workers = {workers}: run at least one run at a time.")
    started = time.perf_counter()
    specs = plan_sweep(config)
    runs_dir = out / RUNS_DIR
    summary: dict = {
        "sweep": config.name,
        "out_dir": str(out),
        "workers": workers,
        "planned": 0,
        "finished_before": [],
        "ran": [],
        "failed": [],
        "skipped": [],
    }
    _execute(specs, config, runs_dir, workers, summary)
    if any(spec.stage == "select" for spec in specs):
        chosen = select_best(specs, out)
        atomic_write_json(
            out / SELECTION_NAME,
            {
                group: None
                if best is None
                else {"folder": best.folder, "variant": best.variant, "point": best.point}
                for group, best in chosen.items()
            },
        )
        summary["vtab_selection"] = {g: (b.variant or "(no grid)") if b else None for g, b in chosen.items()}
        _execute(final_specs(config, chosen), config, runs_dir, workers, summary)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / SUMMARY_NAME, summary)
    log.info(
        "sweep %s: %d planned, %d ran, %d already done, %d failed, %d skipped",
        config.name,
        summary["planned"],
        len(summary["ran"]),
        len(summary["finished_before"]),
        len(summary["failed"]),
        len(summary["skipped"]),
    )
    return summary


def format_summary(summary: dict) -> str:
    """A few lines for the terminal: counts, then every failed and skipped run with its reason."""
    head = (
        f"sweep '{summary['sweep']}' in {summary['out_dir']}: {summary['planned']} runs planned, "
        f"{len(summary['ran'])} ran, {len(summary['finished_before'])} already finished, "
        f"{len(summary['failed'])} failed, {len(summary['skipped'])} skipped ({summary.get('seconds', 0)} s)"
    )
    lines = [head]
    for group, variant in summary.get("vtab_selection", {}).items():
        lines.append(f"  VTAB selection {group.split('|')[0]} / {group.split('|')[-1]}: {variant}")
    lines += [
        f"  FAILED  {f['run']}: {f['error']} (see {RUNS_DIR}/{f['run']}/{ERROR_NAME})"
        for f in summary["failed"]
    ]
    lines += [f"  skipped {s['run']}: {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: ``python -m vlprompt.sweep RUN_FOLDER`` runs that folder's sweep.json."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m vlprompt.sweep RUN_FOLDER", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return 0 if execute_run(argv[0]) else 1


if __name__ == "__main__":
    sys.exit(main())
