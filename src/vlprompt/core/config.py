"""Building typed config dataclasses from loose key=value input with errors that name the field."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from vlprompt.core.errors import ConfigError

C = TypeVar("C")


def _coerce(value: Any, annotation: Any, field_name: str, where: str) -> Any:
    """Convert CLI strings (and YAML scalars) to the field's declared type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        for candidate in non_none:
            try:
                return _coerce(value, candidate, field_name, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}.{field_name}: cannot read {value!r} as {annotation}.")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}.{field_name} = {value!r} is not allowed; choose one of {list(args)}.")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}.{field_name}: expected a list, got {value!r}.")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, field_name, where) if inner is not Any else v for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}.{field_name} = {value!r} is not a boolean; use true or false.")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}.{field_name} = {value!r} is not a number.")
        try:
            number = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.{field_name} = {value!r} is not a {annotation.__name__}.") from None
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}.{field_name} = {value!r} must be a whole number.")
        return number
    if annotation is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}.{field_name} = {value!r} is not a string.")
        return str(value)
    return value


def build_config(cls: type[C], values: Mapping[str, Any] | None = None, where: str | None = None) -> C:
    """Instantiate dataclass ``cls`` from ``values``; unknown keys and bad values raise ConfigError."""
    where = where or cls.__name__
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, fields, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known fields: {', '.join(sorted(fields))}."
        raise ConfigError(f"{where}: unknown field '{key}'; {hint}")
    kwargs = {k: _coerce(v, hints[k], k, where) for k, v in values.items()}
    config = cls(**kwargs)
    if not isinstance(config, ValidatedConfig):  # a ValidatedConfig checked itself when it was constructed
        validate_fields(config, where)
    return config


def deep_merge(base: dict, update: dict) -> dict:
    """``update`` over ``base``, nested mappings merged key by key (overrides of one field keep its siblings)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml_mapping(path: str | Path, what: str = "Config file", fields_hint: str = "method:, backbone:, ...") -> dict:
    """A YAML file that must hold a mapping; a missing file or bad YAML is a ConfigError naming the file.

    An empty file (or one holding only comments) is refused too: it usually means a save went wrong or the wrong
    file was named, and running every default in its place would produce a result that looks deliberate."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} '{path}' does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} '{path}' is not valid YAML: {error}") from None
    if data is None:
        raise ConfigError(
            f"{what} '{path}' is empty (or holds only comments), so it sets nothing and every default would run "
            f"unannounced. Write its fields ({fields_hint}) into it, or leave the file out and give key=value "
            "overrides on the command line."
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{path}' must hold a mapping of fields ({fields_hint}).")
    return data


def check_choice(where: str, field_name: str, value: Any, allowed: typing.Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{where}.{field_name} = {value!r} is not allowed; choose one of {allowed}.")


def check_range(where: str, field_name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ConfigError(f"{where}.{field_name} = {value!r} is out of range; it must lie in {bounds}.")


def validate_fields(config: Any, where: str | None = None) -> None:
    """Check every field of dataclass instance ``config`` against its metadata: ``range=(low, high)`` (either
    bound may be None) and ``choices=(...)``. The one place ranges and choices are enforced, so validation and
    ``vlprompt list methods --options`` read the same declaration; a None value (an unset optional) is skipped.
    Raises ConfigError naming ``where.field`` (``where`` defaults to the config's ``config_name`` or class)."""
    named = config.config_name if isinstance(config, ValidatedConfig) else ""
    where = where or named or type(config).__name__
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if value is None:
            continue
        choices = item.metadata.get("choices")
        if choices is not None:
            check_choice(where, item.name, value, choices)
        bounds = item.metadata.get("range")
        if bounds is not None:
            check_range(where, item.name, value, *bounds)


class ValidatedConfig:
    """Base of the config dataclasses: construction checks ranges and choices from field metadata
    (``validate_fields``). A subclass's own ``__post_init__`` holds only cross-field checks and calls
    ``super().__post_init__()`` first. ``config_name`` is the prefix errors use (the class name by default)."""

    config_name: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        validate_fields(self)


def option(default: Any = dataclasses.MISSING, *, help: str, range: tuple | None = None,
           choices: typing.Iterable[Any] | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with the metadata every config field carries: ``help`` (a sentence), optionally
    ``range=(low, high)`` and ``choices``."""
    metadata: dict[str, Any] = {"help": help}
    if range is not None:
        metadata["range"] = tuple(range)
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def as_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """One field of a config dataclass as the user sees it: name, type, default, help, range and choices."""

    name: str
    type: str
    default: Any  # dataclasses.MISSING when the field has none
    help: str
    range: tuple | None = None
    choices: tuple | None = None

    def constraint(self) -> str:
        """'one of a | b', 'in [low, high]' or '' (the text validate_fields enforces)."""
        if self.choices is not None:
            return "one of " + " | ".join(str(c) for c in self.choices)
        if self.range is not None:
            low, high = self.range
            return f"in [{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        return ""


def describe_options(cls: type) -> list[OptionInfo]:
    """The fields of a config dataclass with their defaults and help (field metadata "help"), in order."""
    options = []
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            default = dataclasses.MISSING
        kind = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", str(item.type))
        meta = item.metadata
        options.append(OptionInfo(item.name, kind, default, str(meta.get("help", "")), meta.get("range"),
                                  meta.get("choices")))
    return options
