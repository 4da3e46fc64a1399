"""Reports from hand-made run folders: mean ± std tables, HM of the averaged accuracies, traces, the
one table per backbone, VTAB groups, and plots written as valid PNGs."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
from PIL import Image

from vlprompt.analysis.report import write_report
from vlprompt.analysis.results import load_results
from vlprompt.analysis.tables import harmonic_mean
from vlprompt.cli import main
from vlprompt.core.errors import MissingExtraError, VlpromptError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(
    root: Path,
    name: str,
    records: list[dict],
    backbone: str = "world:clip",
    label: str | None = None,
    stage: str | None = None,
    metrics: list[dict] | None = None,
) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    defaults = {"backbone": backbone, "shots": 16, "seed": 1, "protocol": "fewshot", "split": "test"}
    (folder / "results.json").write_text(json.dumps([{**defaults, **r} for r in records]))
    (folder / "config.json").write_text(
        json.dumps({"backbone_id": backbone, "vlprompt_version": "0.1.0", "run": {}})
    )
    if label or stage:
        (folder / "sweep.json").write_text(
            json.dumps({"label": label or records[0]["method"], "stage": stage or "run", "variant": ""})
        )
    if metrics:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return folder


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _base2new(root: Path, method: str, seed: int, base: float | None, new: float | None, **kw) -> None:
    common = {"method": method, "protocol": "base2new", "seed": seed, "saw_new_classnames": False}
    make_run(
        root,
        f"b2n_{method}_s{seed}",
        [
            {**common, "dataset": "world:shapes/base", "split": "base", "accuracy": base},
            {**common, "dataset": "world:shapes/new", "split": "new", "accuracy": new},
        ],
        **kw,
    )


def test_hm_is_of_the_averaged_accuracies(tmp_path):
    runs = tmp_path / "runs"
    _base2new(runs, "coop", 1, 0.80, 0.40)
    _base2new(runs, "coop", 2, 0.60, 0.80)
    _base2new(runs, "linear", 1, 0.90, None)
    written = write_report(runs, tmp_path / "report", plots=False)
    rows = {r["method"]: r for r in _csv(written["base2new_world_shapes_16-shot.csv"])}
    assert float(rows["coop"]["Base"]) == pytest.approx(70.0, abs=1e-3)
    assert float(rows["coop"]["New"]) == pytest.approx(60.0, abs=1e-3)
    expected = harmonic_mean(70.0, 60.0)
    mean_of_hms = (harmonic_mean(80.0, 40.0) + harmonic_mean(60.0, 80.0)) / 2
    assert float(rows["coop"]["HM"]) == pytest.approx(expected, abs=1e-3) and abs(expected - mean_of_hms) > 3
    assert float(rows["coop"]["Base std"]) == pytest.approx(math.sqrt(200.0), abs=1e-3)
    assert rows["linear"]["New"] == "" and rows["linear"]["HM"] == ""
    assert rows["coop"]["New names seen in training"] == "no"
    assert rows["coop"]["runs"] == "b2n_coop_s1;b2n_coop_s2"
    text = written["report.md"].read_text()
    assert "| coop | 70.00 ± 14.14 | 60.00 ± 28.28 | 64.62 | no |" in text
    assert "| linear | 90.00 | — | — | no |" in text


def test_fewshot_and_shift_tables_trace_every_number(tmp_path):
    runs = tmp_path / "runs"
    for method, base in (("coop", 0.5), ("vpt-deep", 0.3)):
        for shots in (1, 4):
            for seed in (1, 2, 3):
                make_run(
                    runs,
                    f"fs_{method}_{shots}_{seed}",
                    [
                        {
                            "method": method,
                            "dataset": "world:shapes",
                            "shots": shots,
                            "seed": seed,
                            "accuracy": base + 0.01 * seed + 0.1 * shots,
                        }
                    ],
                )
        make_run(
            runs,
            f"shift_{method}",
            [
                {
                    "method": method,
                    "protocol": "shift",
                    "dataset": "world:shapes-photo",
                    "split": "source",
                    "accuracy": base,
                },
                {
                    "method": method,
                    "protocol": "shift",
                    "dataset": "world:shapes-sketch",
                    "split": "target",
                    "accuracy": base / 2,
                    "source": "world:shapes-photo",
                },
                {
                    "method": method,
                    "protocol": "shift",
                    "dataset": "world:shapes-blueprint",
                    "split": "target",
                    "accuracy": base / 4,
                    "source": "world:shapes-photo",
                },
            ],
        )
    written = write_report(runs, plots=False)
    assert written["report.md"].parent == runs / "report"
    rows = {r["method"]: r for r in _csv(written["fewshot_world_shapes.csv"])}
    assert float(rows["coop"]["1"]) == pytest.approx(62.0, abs=1e-3)
    assert float(rows["coop"]["4"]) == pytest.approx(92.0, abs=1e-3)
    assert float(rows["coop"]["1 std"]) == pytest.approx(1.0, abs=1e-3) and rows["coop"]["1 n"] == "3"
    shift = {r["method"]: r for r in _csv(written["shift_world_shapes-photo_16-shot.csv"])}
    assert float(shift["coop"]["world:shapes-photo (source)"]) == pytest.approx(50.0, abs=1e-3)
    assert float(shift["coop"]["Targets mean"]) == pytest.approx((25.0 + 12.5) / 2)
    trace = _csv(written["trace.csv"])
    cell = next(
        t
        for t in trace
        if t["table"] == "fewshot_world_shapes" and t["method"] == "vpt-deep" and t["column"] == "4"
    )
    assert cell["runs"] == "fs_vpt-deep_4_1;fs_vpt-deep_4_2;fs_vpt-deep_4_3"
    assert all(t["runs"] for t in trace) and all(t["backbone"] == "world:clip" for t in trace)


def test_mixed_backbones_get_one_table_each(tmp_path):
    runs = tmp_path / "runs"
    make_run(
        runs, "a", [{"method": "coop", "dataset": "world:shapes", "accuracy": 0.5}], backbone="world:clip"
    )
    make_run(
        runs,
        "b",
        [{"method": "coop", "dataset": "world:shapes", "seed": 2, "accuracy": 0.6}],
        backbone="open_clip:ViT-B-16@openai",
    )
    written = write_report(runs, plots=False)
    assert sorted(name for name in written if name.startswith("fewshot_")) == [
        "fewshot_world_shapes_open_clip_ViT-B-16_openai.csv", "fewshot_world_shapes_world_clip.csv"
    ]
    report = written["report.md"].read_text()
    assert "Backbone: `world:clip`" in report and "Backbone: `open_clip:ViT-B-16@openai`" in report
    assert "| coop | 50.00 |" in report and "| coop | 60.00 |" in report  # never averaged across backbones


def test_duplicate_cells_and_empty_folder(tmp_path):
    with pytest.raises(VlpromptError, match="No run results"):
        write_report(tmp_path)
    runs = tmp_path / "runs"
    # A results.json without config.json (e.g. the demo's summary of its runs) is not a run folder.
    runs.mkdir()
    (runs / "results.json").write_text(json.dumps([{"method": "coop", "accuracy": 0.5}]))
    for name, accuracy in (("x", 0.5), ("y", 0.25)):
        make_run(runs, name, [{"method": "coop", "dataset": "world:shapes", "accuracy": accuracy}])
    # Two runs made by hand (no sweep.json) are two experiments: a row each, named by folder.
    report = write_report(runs, plots=False)["report.md"].read_text()
    assert "| coop (x) | 50.00 |" in report and "| coop (y) | 25.00 |" in report
    for name in ("x", "y"):
        (runs / name / "sweep.json").write_text(json.dumps({"label": "coop", "stage": "run"}))
    with pytest.raises(VlpromptError, match="'x' and 'y'"):  # one sweep's runs filling one cell: a sweep bug
        write_report(runs, plots=False)


def test_vtab_table_groups_standard_tasks(tmp_path):
    runs = tmp_path / "runs"
    accuracies = {"cifar": 0.6, "dtd": 0.4, "eurosat": 0.9, "clevr_count": 0.5}
    for task, accuracy in accuracies.items():
        for seed in (1, 2):
            make_run(
                runs,
                f"{task}_{seed}",
                [
                    {
                        "method": "vpt-deep",
                        "dataset": f"vtab:{task}",
                        "shots": 0,
                        "seed": seed,
                        "accuracy": accuracy,
                    }
                ],
                backbone="timm:vit_base_patch16_224",
                label="vpt-deep",
                stage="final",
            )
        make_run(
            runs,
            f"{task}_select",
            [{"method": "vpt-deep", "dataset": f"vtab:{task}", "shots": 0, "accuracy": 0.99}],
            backbone="timm:vit_base_patch16_224",
            label="vpt-deep",
            stage="select",
        )
    written = write_report(runs, plots=False)
    (row,) = _csv(written["vtab_VTAB-1k.csv"])
    assert float(row["Natural"]) == pytest.approx(50.0, abs=1e-3)
    assert float(row["Specialized"]) == pytest.approx(90.0, abs=1e-3)
    assert float(row["Structured"]) == pytest.approx(50.0, abs=1e-3) and row["Seeds"] == "2"
    assert "select" not in row["runs"]  # selection scores never enter a table
    header = list(row)
    assert header.index("cifar") < header.index("dtd") < header.index("eurosat") < header.index("clevr_count")


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 100 and image.size[1] > 100


def test_plots_are_valid_pngs(tmp_path):
    runs = tmp_path / "runs"
    for method in ("vpt-deep", "spt-deep"):
        for seed in (1, 2):
            for shots in (1, 2, 4):
                metrics = [
                    {
                        "step": step,
                        "epoch": 0,
                        "nmi/block0": 0.1 + 0.01 * step + (method == "spt-deep"),
                        "nmi/block1": 0.2 + 0.02 * step,
                        "nmi/mean": 0.0,
                    }
                    for step in (0, 5, 10)
                ]
                metrics.insert(1, {"step": 5, "loss": 1.0})
                make_run(
                    runs,
                    f"{method}_{shots}_{seed}",
                    [
                        {
                            "method": method,
                            "dataset": "world:shapes",
                            "shots": shots,
                            "seed": seed,
                            "accuracy": 0.4,
                        }
                    ],
                    metrics=metrics if shots == 4 else None,
                )
        _base2new(runs, method, 1, 0.7, 0.3)
    # shots 0 (the whole training split) is a table column, 'all', but no point on the shots axis.
    make_run(
        runs, "vpt-deep_all", [{"method": "vpt-deep", "dataset": "world:shapes", "shots": 0, "accuracy": 0.6}]
    )
    written = write_report(runs)
    header = list(_csv(written["fewshot_world_shapes.csv"])[0])
    assert header.index("4") < header.index("all")
    pngs = [p for name, p in written.items() if name.endswith(".png")]
    assert {p.name.split("_")[0] for p in pngs} == {"fewshot", "base2new", "nmi"}
    for path in pngs:
        _assert_png(path)
    text = written["report.md"].read_text()
    assert all(f"![{p.name}]({p.name})" in text for p in pngs)
    assert len(load_results(runs)) == 2 * 2 * 3 + 2 * 2 + 1


def test_without_matplotlib_the_report_writes_its_tables_and_names_the_extra(tmp_path, monkeypatch, capsys):
    # matplotlib absent, as after a plain `pip install vlprompt`: None in sys.modules makes its import fail.
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["vlprompt.analysis.plots"]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    runs = tmp_path / "runs"
    _base2new(runs, "coop", 1, 0.80, 0.40)
    with pytest.raises(MissingExtraError, match=r"pip install 'vlprompt\[plots\]'"):
        import vlprompt.analysis.plots  # noqa: F401
    assert main(["report", str(runs)]) == 0
    printed = capsys.readouterr().out
    assert "Tables only, no plots: Report plots need matplotlib" in printed and "vlprompt[plots]" in printed
    written = sorted(p.name for p in (runs / "report").iterdir())
    assert written == ["base2new_world_shapes_16-shot.csv", "report.md", "trace.csv"]


def test_load_results_gives_one_row_per_record_with_its_run_folder(tmp_path):
    runs = tmp_path / "runs"
    _base2new(runs, "coop", 1, 0.80, None, label="coop ctx=4")
    make_run(runs, "plain", [{"method": "linear", "dataset": "world:shapes", "shots": 0, "accuracy": 0.25}])
    (runs / "results.json").write_text(json.dumps([{"method": "coop", "accuracy": 0.5}]))  # not a run folder
    results = load_results(runs)
    assert list(results.columns[:7]) == ["run", "path", "backbone", "label", "stage", "variant", "sweep"]
    assert list(results["run"]) == ["b2n_coop_s1", "b2n_coop_s1", "plain"]
    assert list(results["label"]) == ["coop ctx=4", "coop ctx=4", "linear"]  # sweep.json's label, else the method
    assert list(results["split"]) == ["base", "new", "test"] and results["path"][2] == str(runs / "plain")
    assert str(results["shots"].dtype) == "Int64" and list(results["shots"]) == [16, 16, 0]
    assert results["accuracy"].isna().tolist() == [False, True, False]
    assert results["saw_new_classnames"].tolist()[:2] == [False, False]
    one = load_results(runs / "plain")  # a single run folder
    assert len(one) == 1 and one["run"][0] == "." and one["accuracy"][0] == 0.25
