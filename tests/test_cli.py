"""The command line: names, errors without tracebacks, train/eval round trip on a tiny backbone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlprompt import __version__
from vlprompt.cli import main
from vlprompt.cli.overrides import parse_overrides
from vlprompt.evaluate_run import evaluate_run


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("what", ["methods", "backbones", "datasets"])
def test_list_prints_one_name_per_line(what, capsys):
    assert main(["list", what]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(" " not in line.strip() for line in lines)


def test_list_methods_has_the_first_methods(capsys):
    main(["list", "methods"])
    names = capsys.readouterr().out.split()
    assert {"zeroshot", "zeroshot-ensemble", "linear"} <= set(names)


def test_overrides_parse_into_nested_values():
    assert parse_overrides(["train.lr=0.01", "shots=8", "method=coop", "train.select=best_val"]) == {
        "train": {"lr": 0.01, "select": "best_val"},
        "shots": 8,
        "method": "coop",
    }


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unknown_method_lists_close_names_without_traceback(capsys, tmp_path):
    code, _, err = run_cli(["train", "method=coopp", f"out={tmp_path}"], capsys)
    assert code == 2
    assert "Unknown method 'coopp'" in err and "coop" in err
    assert "Traceback" not in err


def test_unknown_backbone_lists_close_names(capsys, tmp_path):
    code, _, err = run_cli(["train", "backbone=world:clp", f"out={tmp_path}", "method=linear"], capsys)
    assert code == 2
    assert "world:clip" in err


def test_unknown_dataset_lists_close_names(capsys, tmp_path):
    code, _, err = run_cli(["train", "dataset=world-objectz", f"out={tmp_path}", "method=linear"], capsys)
    assert code == 2
    assert "Unknown dataset" in err


def test_invalid_config_value_names_the_field_and_allowed_values(capsys, tmp_path):
    code, _, err = run_cli(["train", "method=linear", "train.optimizer=adam", f"out={tmp_path}"], capsys)
    assert code == 2
    assert "optimizer" in err and "sgd" in err and "adamw" in err


def test_unknown_config_key_is_refused(capsys, tmp_path):
    code, _, err = run_cli(["train", "method=linear", "train.learning_rate=0.1", f"out={tmp_path}"], capsys)
    assert code == 2
    assert "learning_rate" in err and "lr" in err


def test_unwritable_output_folder_fails_before_training(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(["train", "method=linear", f"out={blocker}/run"], capsys)
    assert code == 2
    assert "not writable" in err


def test_missing_config_file_is_a_clear_error(capsys, tmp_path):
    code, _, err = run_cli(["train", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "does not exist" in err


def test_yaml_config_train_then_eval_round_trip(capsys, tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "method: linear\nbackbone: tiny:timm_vit\ndataset: world-object\nshots: 2\nseed: 1\n"
        "dataset_options: {train_per_class: 4, val_per_class: 2, test_per_class: 2}\n"
        "train: {epochs: 2, batch_size: 16, progress: false}\n"
    )
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", str(config), "train.lr=0.01", f"out={out}"], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results[0]["method"] == "linear"
    # The folder evaluates again (vlprompt eval) to exactly the accuracy the run recorded.
    assert evaluate_run(out)[0]["accuracy"] == results[0]["accuracy"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["train_resolved"]["lr"] == 0.01 and saved["backbone_id"].startswith("tiny:")
    assert saved["vlprompt_version"] == __version__
    code, stdout, err = run_cli(["eval", str(out)], capsys)
    assert code == 0, err
    assert f"{results[0]['accuracy']:.4f}" in stdout
