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

from vlprompt.core.config import deep_merge
from vlprompt.core.errors import ConfigError, unknown_name

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


def _dotted(values: dict, prefix: str = "") -> dict[str, object]:
    """{'train': {'lr': 0.1}} -> {'train.lr': 0.1}; lists and scalars are leaves."""
    flat: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def preset_values(name: str, shots: int = DEFAULT_SHOTS) -> dict[str, object]:
    """What ``preset=NAME`` sets for a run of ``shots`` shots, as dotted keys (method, method_options.*, train.*)."""
    expanded = apply_preset({"preset": name, "shots": shots})
    return {key: value for key, value in _dotted(expanded).items() if key not in ("preset", "shots")}


def applied_preset_values(values: dict) -> tuple[dict[str, object], dict[str, object]]:
    """(what the preset set, what the user's own keys replaced) for run-config ``values`` holding ``preset=``;
    both as dotted keys. The CLI prints them so that a newcomer sees the recipe that actually ran."""
    name = values.get("preset")
    if not name:
        return {}, {}
    user = _dotted(values)
    shots = int(values.get("shots", DEFAULT_SHOTS))
    preset = preset_values(str(name), shots)
    applied = {k: v for k, v in preset.items() if k not in user}
    replaced = {k: user[k] for k in preset if k in user and user[k] != preset[k]}
    return applied, replaced


def describe_preset(name: str) -> str:
    """The preset as ``vlprompt list presets NAME`` prints it: its description, the official source it was read
    from, and every value it sets (epochs per shot count and the sweep grid where it has them)."""
    import textwrap

    preset = load_preset(name)
    source = preset["source"]
    files = ", ".join(source.get("files", [])) if isinstance(source, dict) else ""
    origin = f"{source.get('repo', '')}" + (f" ({files})" if files else "") if isinstance(source, dict) else source
    lines = [f"Preset '{name}': method '{preset['method']}'", ""]
    lines += textwrap.wrap(" ".join(str(preset["description"]).split()), 100)
    lines += ["", *textwrap.wrap(f"Official source: {origin}", 100, subsequent_indent="  "), "",
              "Sets (any key you give on the command line or in a YAML config wins):"]
    settings = _dotted({"method": preset["method"], "method_options": preset.get("method_options") or {},
                        "train": preset.get("train") or {}})
    if preset.get("epochs_by_shots"):
        settings.pop("train.epochs", None)  # the by-shots line below says what it is
    lines += [f"  {key} = {value!r}" for key, value in settings.items()]
    if preset.get("epochs_by_shots"):
        table = ", ".join(f"{shots} shots: {epochs}" for shots, epochs in preset["epochs_by_shots"].items())
        lines.append(f"  train.epochs by shots (unless you set train.epochs): {table}")
    if preset.get("grid"):
        lines.append("Sweep grid (used by 'vlprompt sweep' and the protocol commands):")
        lines += [f"  {key}: {values}" for key, values in preset["grid"].items()]
    lines += ["", f"Use it: vlprompt train preset={name} dataset=... shots=16 [key=value ...]"]
    return "\n".join(lines)
