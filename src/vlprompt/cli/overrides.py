"""key=value overrides and the optional YAML config path of a command: the command line's only parsing of values."""
from __future__ import annotations

from collections.abc import Sequence

import yaml

from vlprompt.core.errors import ConfigError


def parse_overrides(pairs: Sequence[str]) -> dict:
    """['train.lr=0.01', 'shots=8'] -> {'train': {'lr': 0.01}, 'shots': 8} (values read as YAML scalars)."""
    result: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"Override '{pair}' is not of the form key=value (e.g. train.lr=0.01).")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override '{pair}': '{part}' is not a section.")
        node[parts[-1]] = value
    return result


def split_config_and_overrides(items: Sequence[str]) -> tuple[str | None, list[str]]:
    config = next((i for i in items if "=" not in i), None)
    return config, [i for i in items if "=" in i]
