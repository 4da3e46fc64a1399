"""Planning: a SweepConfig becomes RunSpecs before anything trains, each with a stable folder name (readable
parts plus a short hash of its run config); VTAB's final stage is planned from the selection's scores."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt.artifacts.run_dir import RunDir
from vlprompt.core.errors import ConfigError, VlpromptError
from vlprompt.data.vtab_stages import VTAB_FINAL_DATASET, VTAB_SELECT_DATASET
from vlprompt.experiment import run_config_from_dict
from vlprompt.methods.base import METHODS
from vlprompt.sweep.config import DatasetEntry, MethodEntry, SweepConfig

STAGES = ("run", "select", "final")
# The sweep folder: one folder per run under runs/, shared few-shot indices and frozen features beside them.
RUNS_DIR = "runs"
FEATURES_DIR = "features"
SUMMARY_NAME = "summary.json"
SELECTION_NAME = "vtab_selection.json"


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
    if method.nmi:
        run["nmi"] = copy.deepcopy(method.nmi)
    if method.preset:  # expanded per run by run_config_from_dict, under the run's own keys and shots
        run["preset"] = method.preset
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
        run_config_from_dict(spec.run)  # resolves and validates training settings and method options
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


def select_best(specs: list[RunSpec], out_dir: Path) -> dict[str, RunSpec | None]:
    """The best selection run per group by its val200 score (the only score a selection run has)."""
    chosen: dict[str, RunSpec | None] = {}
    scores: dict[str, float] = {}
    for spec in specs:
        if spec.stage != "select":
            continue
        chosen.setdefault(spec.group, None)
        run = RunDir(out_dir / RUNS_DIR / spec.folder)
        if not run.is_finished():
            continue
        accuracy = run.read_results()[0]["accuracy"]
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

