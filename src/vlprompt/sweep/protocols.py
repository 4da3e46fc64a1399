"""The field's protocols as named commands: each builds a sweep over shots x seeds, runs it, and reports.

`vlprompt fewshot|base2new|shift|vtab key=value ... --out DIR` is a thin layer over `vlprompt sweep` and
`vlprompt report`: the same run folders, the same resume-and-skip behaviour, the same tables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vlprompt.analysis.report import write_report
from vlprompt.core.config import build_config
from vlprompt.core.errors import ConfigError
from vlprompt.presets import load_preset
from vlprompt.sweep import SweepConfig, format_summary, run_sweep

PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "fewshot": {"shots": [1, 2, 4, 8, 16], "seeds": [1, 2, 3]},
    "base2new": {"shots": [16], "seeds": [1, 2, 3]},
    "shift": {"shots": [16], "seeds": [1, 2, 3]},
    "vtab": {"shots": [0], "seeds": [1]},
}
ALLOWED_KEYS = ("methods", "method", "backbone", "dataset", "datasets", "root", "dataset_options", "shots", "seeds",
                "targets", "train", "grid", "method_options", "vtab", "name", "preset")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _flatten_grid(grid: dict, prefix: str = "") -> dict:
    """{'train': {'lr': '0.1,1'}} (from grid.train.lr=0.1,1) -> {'train.lr': [0.1, 1]}: the sweep's dotted form."""
    flat: dict = {}
    for key, value in grid.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten_grid(value, f"{dotted}."))
        else:
            items = _as_list(value)
            flat[dotted] = [yaml.safe_load(v) if isinstance(v, str) else v for v in items]
    return flat


def _expand_preset(values: dict) -> dict:
    """``preset=NAME``: the preset's method, each run built from the preset (so its epochs_by_shots follow each
    run's shots), and the preset's grid unless one is given; every key the user gives still wins."""
    name = values["preset"]
    preset = load_preset(name)
    given = _as_list(values.get("methods", values.get("method")))
    if given and given != [preset["method"]]:
        raise ConfigError(f"preset '{name}' is the recipe of method '{preset['method']}'; drop methods= or pick "
                          "the preset of that method ('vlprompt list presets').")
    expanded = {key: value for key, value in values.items() if key not in ("preset", "method", "methods")}
    expanded["methods"] = [{"name": preset["method"], "preset": name}]
    if not values.get("grid") and preset.get("grid"):
        expanded["grid"] = {key: list(v) for key, v in preset["grid"].items()}
    return expanded


def protocol_sweep(protocol: str, values: dict) -> SweepConfig:
    """The sweep that one protocol command stands for."""
    if protocol not in PROTOCOL_DEFAULTS:
        raise ConfigError(f"Unknown protocol '{protocol}'; choose one of {sorted(PROTOCOL_DEFAULTS)}.")
    unknown = sorted(set(values) - set(ALLOWED_KEYS))
    if unknown:
        raise ConfigError(f"'vlprompt {protocol}': unknown key '{unknown[0]}'; known keys: {', '.join(ALLOWED_KEYS)}.")
    if values.get("preset"):
        values = _expand_preset(values)
    methods = _as_list(values.get("methods", values.get("method")))
    if not methods:
        raise ConfigError(f"'vlprompt {protocol}' needs methods=NAME[,NAME...] (or methods=all).")
    names = _as_list(values.get("datasets", values.get("dataset")))
    if not names:
        raise ConfigError(f"'vlprompt {protocol}' needs dataset=NAME (see 'vlprompt list datasets').")
    options = dict(values.get("dataset_options", {}))
    targets = [{"dataset": t, "root": values.get("root"), "options": options} for t in _as_list(values.get("targets"))]
    if protocol == "shift" and not targets:
        raise ConfigError("'vlprompt shift' needs targets=NAME[,NAME...]: datasets sharing the source's classes.")
    datasets = [{"dataset": n, "root": values.get("root"), "options": options, "targets": targets} for n in names]
    if values.get("method_options"):
        methods = [{**(m if isinstance(m, dict) else {"name": m}), "method_options": dict(values["method_options"])}
                   for m in methods]
    sweep = {
        "name": values.get("name", protocol),
        "methods": methods,
        "datasets": datasets,
        "protocols": [protocol],
        "shots": [int(s) for s in _as_list(values.get("shots"))] or PROTOCOL_DEFAULTS[protocol]["shots"],
        "seeds": [int(s) for s in _as_list(values.get("seeds"))] or PROTOCOL_DEFAULTS[protocol]["seeds"],
        "train": dict(values.get("train", {})),
        "grid": _flatten_grid(dict(values.get("grid", {}))),
        "vtab": dict(values.get("vtab", {})),
    }
    if "backbone" in values:
        sweep["backbone"] = values["backbone"]
    return build_config(SweepConfig, sweep, where=protocol)


def run_protocol(protocol: str, values: dict, out_dir: str | Path, workers: int = 1) -> tuple[dict, dict]:
    """Run the protocol's sweep into ``out_dir`` and write its report; returns (summary, written files)."""
    config = protocol_sweep(protocol, values)
    summary = run_sweep(config, out_dir, workers=workers)
    written = write_report(Path(out_dir))
    return summary, written


__all__ = ["PROTOCOL_DEFAULTS", "format_summary", "protocol_sweep", "run_protocol"]
