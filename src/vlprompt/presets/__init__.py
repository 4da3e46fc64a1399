"""Paper presets: each method's official training recipe, one YAML file per preset in this package.

A preset file holds ``description``, ``source`` (the official config files it was read from), ``method``,
``method_options``, ``train`` (TrainConfig fields), optionally ``epochs_by_shots`` ({shots: epochs}, applied from
the run's ``shots`` unless ``train.epochs`` is given) and ``grid`` (dotted keys -> value lists, for sweeps such as
VPT's lr x weight-decay grid). ``vlprompt train preset=coop-paper dataset=... shots=16``: every key the user
gives beats the preset; the resolved run config (``config.json``) keeps the preset's name.
"""
from __future__ import annotations

from functools import cache
from importlib import resources

import yaml

from vlprompt.config_utils import deep_merge
from vlprompt.errors import ConfigError, unknown_name

KEYS = ("description", "source", "method", "method_options", "train", "epochs_by_shots", "grid")
REQUIRED = ("description", "source", "method", "train")
DEFAULT_SHOTS = 16  # RunConfig's default, used when a run does not say


def list_presets() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


@cache
def _read(name: str) -> dict:
    if name not in list_presets():
        raise unknown_name("preset", name, list_presets())
    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    preset = yaml.safe_load(text)
    where = f"preset '{name}' (src/vlprompt/presets/{name}.yaml)"
    if not isinstance(preset, dict):
        raise ConfigError(f"{where} must be a mapping with keys {', '.join(KEYS)}.")
    unknown = sorted(set(preset) - set(KEYS))
    missing = [key for key in REQUIRED if key not in preset]
    if unknown or missing:
        raise ConfigError(f"{where}: unknown keys {unknown}, missing keys {missing}; allowed: {', '.join(KEYS)}.")
    return preset


def load_preset(name: str) -> dict:
    """The preset as a fresh dict (callers may change it)."""
    return yaml.safe_load(yaml.safe_dump(_read(name)))


def epochs_for(preset: dict, shots: int) -> int | None:
    """Epochs for ``shots`` from ``epochs_by_shots``: the entry for the largest listed shot count <= shots
    (the largest entry for shots=0, the whole training split; the smallest below the first entry)."""
    table = {int(k): int(v) for k, v in (preset.get("epochs_by_shots") or {}).items()}
    if not table:
        return None
    if shots <= 0:
        return table[max(table)]
    below = [k for k in table if k <= shots]
    return table[max(below)] if below else table[min(table)]


def apply_preset(values: dict) -> dict:
    """Run-config values with ``preset=NAME`` expanded under them (the user's keys win); unchanged without one."""
    name = values.get("preset")
    if not name:
        return values
    preset = load_preset(str(name))
    if values.get("method") not in (None, preset["method"]):
        raise ConfigError(
            f"preset '{name}' is the recipe of method '{preset['method']}', not '{values['method']}'. Drop "
            f"method=, or pick the preset of that method ('vlprompt list presets')."
        )
    base = {
        "method": preset["method"],
        "method_options": dict(preset.get("method_options") or {}),
        "train": dict(preset.get("train") or {}),
    }
    epochs = epochs_for(preset, int(values.get("shots", DEFAULT_SHOTS)))
    if epochs is not None:
        base["train"]["epochs"] = epochs
    return deep_merge(base, values)
