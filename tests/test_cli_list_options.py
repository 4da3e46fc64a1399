"""`vlprompt list methods --options NAME`: every option of a method with its default and help, read from the
config dataclass's field metadata."""

from __future__ import annotations

import dataclasses

import pytest

from vlprompt.cli import main
from vlprompt.core.config import describe_options
from vlprompt.methods import METHODS, list_methods


def test_options_show_inherited_fields_defaults_help_and_training_defaults(capsys):
    assert main(["list", "methods", "--options", "kgcoop"]) == 0
    text = capsys.readouterr().out
    # CoOp's fields (n_ctx with KgCoOp's official default 4, class_position inherited as is), then KgCoOp's own
    assert "n_ctx: int = 4" in text and "class_position: str = 'end'" in text and "weight: float = 8.0" in text
    assert "the paper uses 8" in text and "method_options.NAME=VALUE" in text
    assert "lr=0.002" in text  # KgCoOp's recommended training settings (CoOp's)
    assert text.index("n_ctx:") < text.index("weight:")


@pytest.mark.parametrize("name", list_methods())
def test_every_option_has_help_and_the_dataclass_default(name):
    config_class = METHODS.get(name).config_class
    options = describe_options(config_class)
    assert [o.name for o in options] == [f.name for f in dataclasses.fields(config_class)]
    assert all(len(o.help) > 10 for o in options), [o.name for o in options if len(o.help) <= 10]
    assert {o.name: o.default for o in options} == dataclasses.asdict(config_class())


def test_describe_options_of_factories_and_required_fields():
    @dataclasses.dataclass
    class Example:
        size: int
        names: list[str] = dataclasses.field(default_factory=lambda: ["a"], metadata={"help": "the names"})

    size, names = describe_options(Example)
    assert size.default is dataclasses.MISSING and size.help == "" and size.type == "int"
    assert names.default == ["a"] and names.help == "the names" and names.type == "list[str]"


def test_options_of_unknown_method_or_of_datasets_are_one_paragraph_errors(capsys):
    assert main(["list", "methods", "--options", "kgcop"]) == 2
    assert "Did you mean: kgcoop" in capsys.readouterr().err
    assert main(["list", "datasets", "--options", "coop"]) == 2
    assert "list methods --options NAME" in capsys.readouterr().err
