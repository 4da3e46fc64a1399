"""The newcomer's path (issue 19 item 7): what a preset sets, the CoOp layout offline, a report over unrelated
runs, the demo's report in %, and accuracies that read as the counts they come from."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vlprompt.cli import main
from vlprompt.core.errors import DataError, VlpromptError
from vlprompt.data.registry import load_dataset
from vlprompt.presets import applied_preset_values, load_preset


def test_list_presets_name_prints_values_description_and_source(capsys):
    assert main(["list", "presets", "coop-paper"]) == 0
    out = capsys.readouterr().out
    preset = load_preset("coop-paper")
    assert out.startswith("Preset 'coop-paper': method 'coop'")
    assert "Official source: KaiyangZhou/CoOp (configs/trainers/CoOp/vit_b16.yaml" in " ".join(out.split())
    for key, value in preset["train"].items():
        if key != "epochs":  # epochs follow the shot count, printed as its own line
            assert f"  train.{key} = {value!r}\n" in out
    assert "  method_options.n_ctx = 16\n" in out
    assert "train.epochs by shots (unless you set train.epochs): 1 shots: 50, 2 shots: 50, 4 shots: 100" in out
    assert main(["list", "presets", "vpt-deep-vtab"]) == 0
    assert "  train.weight_decay: [0.01, 0.001, 0.0001, 0.0]" in capsys.readouterr().out  # its sweep grid
    assert main(["list", "presets", "coop-papr"]) == 2
    assert "Did you mean: coop-paper" in capsys.readouterr().err
    assert main(["list", "datasets", "coop-paper"]) == 2


def test_train_says_which_preset_values_it_applied(tmp_path, capsys):
    applied, replaced = applied_preset_values({"preset": "coop-paper", "shots": 4, "train": {"lr": 0.01}})
    assert applied["train.epochs"] == 100 and applied["method_options.n_ctx"] == 16 and "train.lr" not in applied
    assert replaced == {"train.lr": 0.01}
    code = main(["train", "preset=kgcoop-paper", "backbone=tiny:open_clip", "dataset=world-colour", "shots=1",
                 "train.epochs=1", "train.batch_size=4", "dataset_options.train_per_class=1",
                 "dataset_options.val_per_class=1", "dataset_options.test_per_class=1", f"out={tmp_path / 'run'}"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0
    assert out.startswith("preset kgcoop-paper applied: method='kgcoop', method_options.ctx_init='a photo of a'")
    assert "train.optimizer='sgd'" in out and "your values replaced: train.batch_size=4, train.epochs=1" in out


def test_world_export_in_the_coop_layout_reads_back_as_the_world_task(tmp_path, capsys):
    root = tmp_path / "coop"
    assert main(["world", "export", "position", "--format", "coop", "--out", str(root), "--per-class", "1"]) == 0
    assert f"read it back with: dataset=coop root={root}" in capsys.readouterr().out
    folder = root / "world_position"
    split = json.loads((folder / "split_zhou_WorldPosition.json").read_text())
    assert sorted(split) == ["test", "train", "val"]
    assert split["train"][0] == ["top_left/position_train_000000.png", 0, "top_left"]  # CoOp's raw names
    assert (folder / "images" / "bottom_right").is_dir()
    world = load_dataset("world-position", train_per_class=1, val_per_class=1, test_per_class=1)
    task = load_dataset("coop", str(root))
    assert task.name == "coop:WorldPosition" and task.labels.classnames == world.labels.classnames
    assert task.meta["raw_classnames"][0] == "top_left"
    for ours, theirs in ((task.train, world.train), (task.val, world.val), (task.test, world.test)):
        assert ours.labels == theirs.labels
        assert np.array_equal(np.asarray(ours[0][0]), np.asarray(theirs[0][0].convert("RGB")))
    assert main(["data", "check", "coop", str(root)]) == 0


def test_plain_coop_options_and_their_errors(tmp_path):
    from test_formats_trees import coop_pets

    coop_pets(tmp_path)
    task = load_dataset("coop", str(tmp_path), template="a photo of a {}, a type of pet.")
    assert task.name == "coop:OxfordPets" and task.labels.templates == ["a photo of a {}, a type of pet."]
    assert task.labels.classnames == load_dataset("coop:OxfordPets", str(tmp_path)).labels.classnames
    with pytest.raises(DataError, match="so template cannot be set; for other data in the CoOp layout use"):
        load_dataset("coop:OxfordPets", str(tmp_path), template="a {}.")
    (tmp_path / "oxford_pets" / "split_zhou_Other.json").write_text("{}")
    with pytest.raises(DataError, match="holds 2 split files .*dataset_options.split_file="):
        load_dataset("coop", str(tmp_path))
    assert len(load_dataset("coop", str(tmp_path), split_file="oxford_pets/split_zhou_OxfordPets.json").train) == 6
    with pytest.raises(VlpromptError, match="Unknown CoOp dataset 'Pets'"):
        load_dataset("coop", str(tmp_path), dataset="Pets")


def test_accuracy_is_the_count_quotient(tmp_path):
    from test_trainer import make_task

    from vlprompt.backbones.tiny import tiny_timm_vit
    from vlprompt.eval.predict import predict
    from vlprompt.eval.tasks import evaluate  # dispatches on the task type (top-1 here)
    from vlprompt.methods import create_method

    task = make_task(n_per_class=67, classes=3)  # 201 images: a float32 mean would show its rounding
    method = create_method("linear", tiny_timm_vit(seed=0), task.labels)
    logits, labels = predict(method, task.test)
    correct = int((logits.argmax(dim=1) == labels).sum())
    assert evaluate(method, task.test) == correct / 201  # the exact quotient, its shortest repr in results.json


def test_demo_report_in_percent_with_the_sweep_plots(tmp_path, capsys):
    from vlprompt.demo import run_demo

    records = run_demo(tmp_path, methods=["zeroshot"], progress=False)
    report = (tmp_path / "report.md").read_text()
    assert f"| zeroshot | {100 * records[0]['accuracy']:.2f} | {records[0]['train_seconds']:.1f} |" in report
    assert "[report/report.md](report/report.md)" in report and (tmp_path / "report" / "trace.csv").exists()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "Tables only, no plots" in report
    else:
        assert "![fewshot_world-paint.png](report/fewshot_world-paint.png)" in report
        assert (tmp_path / "report" / "fewshot_world-paint.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_over_unrelated_runs_groups_them(tmp_path, capsys):
    from test_report import make_run

    runs = tmp_path / "runs"
    make_run(runs, "coop-a", [{"method": "coop", "dataset": "world-object", "accuracy": 0.5}])
    make_run(runs, "coop-b", [{"method": "coop", "dataset": "world-object", "accuracy": 0.75}])
    make_run(runs, "vpt", [{"method": "vpt-deep", "dataset": "world-paint", "accuracy": 0.9}], backbone="world:mae")
    make_run(runs, "lin", [{"method": "linear", "dataset": "world-paint", "accuracy": 0.8}])
    assert main(["report", str(runs), "--no-plots"]) == 0
    out = capsys.readouterr().out
    tables = [line for line in out.splitlines() if line.startswith(("## ", "| "))]
    assert tables == [
        "## Few-shot: world-object", "| Method | 16 |", "| coop (coop-a) | 50.00 |", "| coop (coop-b) | 75.00 |",
        "## Few-shot: world-paint", "| Method | 16 |", "| linear | 80.00 |",
        "## Few-shot: world-paint", "| Method | 16 |", "| vpt-deep | 90.00 |",
    ]
    assert "Backbone: `world:mae`" in out and "Backbone: `world:clip`" in out


def test_base_to_new_runs_made_by_hand_keep_their_own_rows_and_columns(tmp_path):
    from test_report import make_run

    from vlprompt.analysis.report import write_report

    runs = tmp_path / "runs"
    for name, base, new in (("ctx4", 0.8, 0.4), ("ctx16", 0.6, 0.8)):
        common = {"method": "coop", "protocol": "base2new", "saw_new_classnames": False}
        make_run(runs, name, [{**common, "dataset": "world:shapes/base", "split": "base", "accuracy": base},
                              {**common, "dataset": "world:shapes/new", "split": "new", "accuracy": new}])
    report = write_report(runs, plots=False)["report.md"].read_text()
    assert "| coop (ctx16) | 60.00 | 80.00 | 68.57 | no |" in report
    assert "| coop (ctx4) | 80.00 | 40.00 | 53.33 | no |" in report
