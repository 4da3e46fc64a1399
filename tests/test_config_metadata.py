"""Field metadata is the one source of config validation and of `list methods --options`: every field of every
config has help, and a declared range or choice set is enforced by validate_fields with an error naming the field."""
from __future__ import annotations

import dataclasses

import pytest

from vlprompt.analysis.nmi import NMIOptions
from vlprompt.cli.listing import format_method_options
from vlprompt.core.config import ValidatedConfig, build_config, option, validate_fields
from vlprompt.core.errors import ConfigError
from vlprompt.data.formats.csvfile import CsvOptions
from vlprompt.data.formats.imagefolder import ImageFolderOptions
from vlprompt.experiment import RunConfig, TargetConfig, run_config_from_dict
from vlprompt.methods import METHODS, list_methods
from vlprompt.sweep.config import DatasetEntry, MethodEntry, SweepConfig, VtabConfig
from vlprompt.train.config import TrainConfig

OTHER_CONFIGS = (TrainConfig, RunConfig, TargetConfig, NMIOptions, CsvOptions, ImageFolderOptions, SweepConfig,
                 MethodEntry, DatasetEntry, VtabConfig)


def _configs() -> list[type]:
    return [METHODS.get(name).config_class for name in list_methods()] + list(OTHER_CONFIGS)


def _outside(bounds: tuple, annotation: str):
    low, high = bounds
    step = 1 if "int" in annotation else 0.5
    return low - step if low is not None else high + step


@pytest.mark.parametrize("config_class", _configs(), ids=lambda c: c.__name__)
def test_every_field_has_help(config_class):
    missing = [f.name for f in dataclasses.fields(config_class) if len(str(f.metadata.get("help", ""))) < 10]
    assert missing == []


@pytest.mark.parametrize("name", list_methods())
def test_declared_ranges_and_choices_are_enforced_and_listed(name):
    config_class = METHODS.get(name).config_class
    text = " ".join(format_method_options(name).split())  # wrapped lines joined
    assert "(no help text)" not in text
    for item in dataclasses.fields(config_class):
        bounds, choices = item.metadata.get("range"), item.metadata.get("choices")
        if bounds is not None:
            bad = _outside(bounds, str(item.type))
            with pytest.raises(ConfigError, match=rf"{config_class.__name__}\.{item.name} = {bad!r} is out of range"):
                build_config(config_class, {item.name: bad})
            low, high = ("-inf" if bounds[0] is None else bounds[0]), ("inf" if bounds[1] is None else bounds[1])
            assert f"in [{low}, {high}]" in text
        if choices is not None:
            with pytest.raises(ConfigError, match=rf"{config_class.__name__}\.{item.name} = 'nope' is not allowed"):
                build_config(config_class, {item.name: "nope"})
            assert "one of " + " | ".join(map(str, choices)) in text


def test_ranges_are_checked_on_plain_construction_too():
    with pytest.raises(ConfigError, match=r"TrainConfig\.momentum = 1\.5 is out of range; it must lie in \[0\.0, 1\.0\]"):
        TrainConfig(momentum=1.5)
    with pytest.raises(ConfigError, match=r"TrainConfig\.optimizer = 'adam' is not allowed"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ConfigError, match=r"run\.shots = -1 is out of range"):
        RunConfig(shots=-1)
    assert TrainConfig(max_grad_norm=None).max_grad_norm is None  # an unset optional is not range-checked


def test_validate_fields_on_a_dataclass_that_is_not_a_validated_config():
    @dataclasses.dataclass
    class Plain:
        k: int = option(1, help="a count", range=(1, 3))

    with pytest.raises(ConfigError, match=r"opts\.k = 4 is out of range"):
        build_config(Plain, {"k": "4"}, where="opts")
    validate_fields(Plain(2))


def test_run_config_resolves_every_section_into_its_dataclass():
    config = run_config_from_dict({"method": "coop", "seed": 3, "train": {"lr": "0.5"},
                                   "method_options": {"n_ctx": "4"}, "nmi": {"every": 0},
                                   "targets": [{"dataset": "world-object"}]})
    assert isinstance(config.train, TrainConfig) and config.train.lr == 0.5 and config.train.seed == 3
    assert config.train.batch_size == 32 and config.train.epochs == 50  # CoOp's recommended settings
    assert type(config.method_options).__name__ == "CoOpConfig" and config.method_options.n_ctx == 4
    assert config.nmi == NMIOptions() and config.targets == [TargetConfig("world-object")]
    again = dataclasses.replace(config, seed=4)
    assert again.train.seed == 4 and again.method_options == config.method_options
    assert issubclass(TrainConfig, ValidatedConfig)
