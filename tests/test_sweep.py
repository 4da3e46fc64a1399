"""Sweeps: grid expansion and names, unknown keys, skip-finished, failures, resume, parallel == serial, VTAB
selection that never reads test. Runs use the tiny random-init timm ViT and a small synthetic colour dataset
registered by a plugin module (the sweep's ``imports``), so worker processes see it too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vlprompt.core.config import build_config
from vlprompt.core.errors import ConfigError
from vlprompt.sweep import (
    ERROR_NAME,
    RUNS_DIR,
    SELECTION_NAME,
    SweepConfig,
    format_summary,
    load_sweep_config,
    plan_sweep,
    run_sweep,
    selection_view,
)
from vlprompt.sweep.config import list_sweeps, packaged_sweeps_dir

PLUGIN = "vlprompt_sweeptest_plugin"
PLUGIN_SOURCE = textwrap.dedent('''
    """Synthetic colour tasks for the sweep tests: 4 classes, 32 px, colour + noise, rendered from the id."""
    import os

    import numpy as np
    from PIL import Image

    from vlprompt.data.base import ImageDataset, LabelSpace, TaskData
    from vlprompt.data.registry import DATASETS, register_dataset
    from vlprompt.core.errors import DataError

    COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]
    NAMES = ["red", "green", "blue", "yellow"]
    SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


    class ColourLoader:
        def __init__(self, guard: bool = False) -> None:
            self.guard = guard

        def __call__(self, source: str) -> Image.Image:
            if self.guard and os.environ.get("SWEEPTEST_GUARD_TEST"):
                raise RuntimeError(f"test split read: {source}")
            split, index = source.split("/")
            rng = np.random.default_rng(1000 * SPLIT_SEEDS[split] + int(index))
            colour = np.array(COLOURS[int(index) % 4], dtype=np.float32)
            return Image.fromarray(np.clip(colour + rng.normal(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8))


    def make_task(name, guard_test=False, per_class=(6, 3, 4)):
        splits = {}
        for split, count in zip(("train", "val", "test"), per_class):
            sources = [f"{split}/{i}" for i in range(count * 4)]
            loader = ColourLoader(guard=guard_test and split == "test")
            labels = [i % 4 for i in range(count * 4)]
            splits[split] = ImageDataset(sources, labels, loader, name=f"{name}:{split}")
        return TaskData(name, LabelSpace(list(NAMES)), splits["train"], splits["test"], splits["val"])


    def _broken(root=None, **options):
        raise DataError("sweeptest:broken is broken on purpose")


    for _name, _loader in (
        ("sweeptest:colours", lambda root=None: make_task("sweeptest:colours")),
        ("sweeptest:guarded", lambda root=None: make_task("sweeptest:guarded", guard_test=True)),
        ("sweeptest:broken", _broken),
    ):
        if _name not in DATASETS:
            register_dataset(_name)(_loader)
''')

TRAIN = {"epochs": 2, "batch_size": 8, "lr": 0.05, "progress": False, "device": "cpu", "eval_batch_size": 64}


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plugin")
    (folder / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


@pytest.fixture
def plugin(plugin_dir, monkeypatch) -> Path:
    """The plugin importable here and in worker processes."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")]))
    )
    return plugin_dir


def _config(**values) -> SweepConfig:
    base = {
        "name": "t",
        "backbone": "tiny:timm_vit",
        "imports": [PLUGIN],
        "methods": ["linear"],
        "datasets": ["sweeptest:colours"],
        "shots": [1],
        "seeds": [1],
        "train": dict(TRAIN),
    }
    return build_config(SweepConfig, {**base, **values}, where="sweep")


def _results(out: Path) -> dict[str, list]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((out / RUNS_DIR).glob("*/results.json"))}


def test_grid_expansion_names_and_hashes(plugin):
    config = _config(
        methods=["linear", {"name": "vpt-shallow", "grid": {"train.lr": [0.1, 0.01]}}],
        grid={"method_options.num_tokens": [2, 4]},
        shots=[1, 2],
        seeds=[1, 2, 3],
        protocols=["fewshot", "base2new"],
    )
    specs = plan_sweep(config)
    # linear has no num_tokens: 1 variant; vpt-shallow: 2 x 2 variants; x 2 shots x 3 seeds x 2 protocols.
    assert len(specs) == (1 + 4) * 2 * 3 * 2
    names = [s.folder for s in specs]
    assert len(set(names)) == len(names)
    assert names == [s.folder for s in plan_sweep(config)]  # stable
    vpt = [
        s
        for s in specs
        if s.run["method"] == "vpt-shallow"
        and s.run["seed"] == 2
        and s.run["shots"] == 1
        and s.protocol == "fewshot"
    ]
    assert {(s.run["train"]["lr"], s.run["method_options"]["num_tokens"]) for s in vpt} == {
        (0.1, 2),
        (0.01, 2),
        (0.1, 4),
        (0.01, 4),
    }
    name = next(s.folder for s in vpt if s.variant == "num_tokens=4,lr=0.01")
    assert name.startswith("fewshot__sweeptest_colours__vpt-shallow__num_tokens=4_lr=0.01__1shot__seed2__")
    assert all("num_tokens" not in s.run["method_options"] for s in specs if s.run["method"] == "linear")
    assert (
        next(s for s in vpt if s.variant == "num_tokens=4,lr=0.01").label
        == "vpt-shallow (num_tokens=4,lr=0.01)"
    )


def test_unknown_keys_name_the_key_and_the_file(plugin, tmp_path):
    good = {"name": "t", "imports": [PLUGIN], "methods": ["linear"], "datasets": ["sweeptest:colours"]}
    cases = [
        ({**good, "shot": [1]}, "'shot'"),
        ({**good, "datasets": [{"dataset": "sweeptest:colours", "option": {}}]}, "'option'"),
        ({**good, "grid": {"train.learning_rate": [0.1]}}, "train.learning_rate"),
        ({**good, "grid": {"lr": [0.1]}}, "'lr'"),
        ({**good, "methods": [{"name": "linear", "gird": {}}]}, "'gird'"),
        ({**good, "vtab": {"final_seed": [1]}}, "'final_seed'"),
    ]
    for values, key in cases:
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(values))
        with pytest.raises(ConfigError) as error:
            load_sweep_config(path)
        assert key in str(error.value) and str(path) in str(error.value)
    with pytest.raises(Exception, match="Unknown method"):
        _config(methods=["lineer"])


def test_overrides_merge_into_nested_sections(plugin, tmp_path):
    path = tmp_path / "sweep.yaml"
    values = {"imports": [PLUGIN], "methods": ["linear"], "datasets": ["sweeptest:colours"]}
    path.write_text(yaml.safe_dump({**values, "train": {"epochs": 7, "lr": 0.1}}))
    config = load_sweep_config(path, {"train": {"epochs": 1}, "seeds": [4]})
    assert config.train == {"epochs": 1, "lr": 0.1} and config.seeds == [4]
    with pytest.raises(ConfigError, match="epochs"):
        load_sweep_config(path, {"train": {"epochs": -1}})


def test_skip_finished_incompatible_and_failed_runs(plugin, tmp_path):
    config = _config(methods=["linear", "coop"], datasets=["sweeptest:colours", "sweeptest:broken"])
    first = run_sweep(config, tmp_path)
    assert len(first["ran"]) == 1 and first["planned"] == 4
    assert {s["reason"].split(";")[0] for s in first["skipped"]} == {"method 'coop' needs a text tower"}
    assert len(first["failed"]) == 1 and "broken on purpose" in first["failed"][0]["error"]
    failed = tmp_path / RUNS_DIR / first["failed"][0]["run"]
    assert "broken on purpose" in (failed / ERROR_NAME).read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["failed"] == first["failed"]
    second = run_sweep(config, tmp_path)
    assert second["finished_before"] == first["ran"] and second["ran"] == []
    assert [f["run"] for f in second["failed"]] == [f["run"] for f in first["failed"]]
    text = format_summary(second)
    assert "4 runs planned, 0 ran, 1 already finished, 1 failed, 2 skipped" in text
    assert "FAILED" in text and "broken on purpose" in text and "needs a text tower" in text


def test_interrupted_sweep_resumes_to_the_same_result(plugin, tmp_path, monkeypatch):
    from vlprompt.train import trainer as trainer_module

    config = _config(train={**TRAIN, "epochs": 3})
    reference = run_sweep(config, tmp_path / "reference")
    original = trainer_module.Trainer._save_resume
    calls = []

    def interrupt_after_first_epoch(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "_save_resume", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path / "resumed")
    folder = tmp_path / "resumed" / RUNS_DIR / reference["ran"][0]
    assert calls and not (folder / "results.json").exists()
    monkeypatch.setattr(trainer_module.Trainer, "_save_resume", original)
    resumed = run_sweep(config, tmp_path / "resumed")
    assert resumed["ran"] == reference["ran"]
    assert (
        _results(tmp_path / "resumed")[folder.name][0]["accuracy"]
        == _results(tmp_path / "reference")[folder.name][0]["accuracy"]
    )
    ref = load_file(tmp_path / "reference" / RUNS_DIR / folder.name / "prompts.safetensors")
    got = load_file(folder / "prompts.safetensors")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.slow  # worker processes each import torch: ~30 s on 2 busy cores
def test_parallel_workers_match_serial(plugin, tmp_path):
    config = _config(seeds=[1, 2])
    serial = run_sweep(config, tmp_path / "serial", workers=1)
    parallel = run_sweep(config, tmp_path / "parallel", workers=2)
    assert (
        sorted(serial["ran"]) == sorted(parallel["ran"])
        and len(serial["ran"]) == 2
        and not parallel["failed"]
    )
    a, b = _results(tmp_path / "serial"), _results(tmp_path / "parallel")
    assert {k: [r["accuracy"] for r in v] for k, v in a.items()} == {
        k: [r["accuracy"] for r in v] for k, v in b.items()
    }
    for name in serial["ran"]:
        ref = load_file(tmp_path / "serial" / RUNS_DIR / name / "prompts.safetensors")
        got = load_file(tmp_path / "parallel" / RUNS_DIR / name / "prompts.safetensors")
        assert all(torch.allclose(ref[k], got[k], atol=1e-6) for k in ref)


def test_selection_view_holds_no_test_split(plugin):
    import importlib

    task = importlib.import_module(PLUGIN).make_task("x")
    view = selection_view(task)
    assert view.test is task.val and view.train is task.train and view.val is None
    assert all(value is not task.test for value in vars(view).values())
    assert all(value is not task.test for value in view.meta.values())


def test_vtab_selection_never_reads_test(plugin, tmp_path, monkeypatch):
    config = _config(
        datasets=["sweeptest:guarded"],
        protocols=["vtab"],
        grid={"train.lr": [0.5, 1e-4]},
        vtab={"select_seed": 1, "final_seeds": [1, 2]},
    )
    # Reading any test image raises: the selection stage must complete anyway; only the final stage may fail.
    monkeypatch.setenv("SWEEPTEST_GUARD_TEST", "1")
    guarded = run_sweep(config, tmp_path)
    select = [n for n in guarded["ran"] if n.startswith("vtab-select")]
    assert len(select) == 2 and not any(
        n.startswith("vtab-select") for n in (f["run"] for f in guarded["failed"])
    )
    assert len(guarded["failed"]) == 2 and all("test split read" in f["error"] for f in guarded["failed"])
    scores = {n: _results(tmp_path)[n][0]["accuracy"] for n in select}
    best = max(scores, key=scores.get)
    chosen = json.loads((tmp_path / SELECTION_NAME).read_text())
    assert [c["folder"] for c in chosen.values()] == [best]
    monkeypatch.delenv("SWEEPTEST_GUARD_TEST")
    final = run_sweep(config, tmp_path)
    assert sorted(final["finished_before"]) == sorted(select) and len(final["ran"]) == 2
    for name in final["ran"]:
        spec = json.loads((tmp_path / RUNS_DIR / name / "sweep.json").read_text())
        assert spec["stage"] == "final" and spec["variant"] == chosen[next(iter(chosen))]["variant"]
    from vlprompt.analysis.results import load_results
    from vlprompt.analysis.tables import vtab_tables

    tables = vtab_tables(load_results(tmp_path / RUNS_DIR))
    assert len(tables) == 1 and tables[0].cells.set_index("column").at["guarded", "n"] == 2


def test_world_sweep_configs_plan_every_method():
    from vlprompt.methods import list_methods

    world = load_sweep_config("world")
    specs = plan_sweep(world)
    assert {s.run["method"] for s in specs} == set(list_methods())
    assert {s.protocol for s in specs} == {"fewshot", "base2new", "shift"}
    fewshot = [s for s in specs if s.protocol == "fewshot"]
    assert {s.run["shots"] for s in fewshot} == {1, 2, 4, 8, 16} and {s.run["seed"] for s in fewshot} == {
        1,
        2,
        3,
    }
    quick = load_sweep_config("world_quick.yaml")
    assert len({m.name for m in quick.method_entries}) == 2 and len(plan_sweep(quick)) > 0
    vtab = plan_sweep(load_sweep_config(packaged_sweeps_dir() / "vtab1k.yaml"))
    assert {s.stage for s in vtab} == {"select"} and len(
        {s.run["dataset_options"]["source"] for s in vtab}
    ) == 19


def test_sweep_configs_are_packaged_and_found_by_name(tmp_path, monkeypatch, capsys):
    from vlprompt.cli import main

    assert list_sweeps() == ["vpt_table", "vtab1k", "world", "world_quick", "world_small"]
    assert packaged_sweeps_dir().parent.parent.name == "vlprompt"  # inside the package, so inside the wheel
    # a file given by path wins over a packaged name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "world_quick.yaml").write_text(
        (packaged_sweeps_dir() / "world_quick.yaml").read_text().replace("name: world_quick", "name: mine")
    )
    assert load_sweep_config("world_quick.yaml").name == "mine"
    assert load_sweep_config("world_quick").name == "world_quick"
    with pytest.raises(ConfigError, match="neither a file nor a packaged sweep.*world_quick, world_small"):
        load_sweep_config("world_quik")
    with pytest.raises(ConfigError, match="neither a file nor a packaged sweep"):
        load_sweep_config("elsewhere/world_quick.yaml")  # a path that does not exist is not a packaged name
    assert main(["list", "sweeps"]) == 0
    assert capsys.readouterr().out.split() == list_sweeps()


@pytest.mark.slow
def test_world_quick_sweep_and_report(tmp_path):
    from vlprompt.analysis.report import write_report

    summary = run_sweep(load_sweep_config("world_quick"), tmp_path)
    assert not summary["failed"], summary["failed"]
    written = write_report(tmp_path)
    text = written["report.md"].read_text()
    assert "Few-shot" in text and "Base-to-new" in text and "Domain shift" in text


def _write_vtab_task(folder: Path, with_test_images: bool) -> None:
    """A 2-class VTAB-1k task as distributed: JPEGs and the four split files."""
    from PIL import Image

    splits = {"train800": range(8), "val200": range(8, 12), "test": range(12, 16)}
    splits["train800val200"] = range(12)
    folder.mkdir(parents=True, exist_ok=True)
    for name, indices in splits.items():
        lines = [f"images/{i:03d}.jpg {i % 2}" for i in indices]
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (folder / "images").mkdir(exist_ok=True)
    for i in range(16 if with_test_images else 12):
        colour = (200, 30, 30) if i % 2 else (30, 30, 200)
        Image.new("RGB", (32, 32), colour).save(folder / "images" / f"{i:03d}.jpg")


def test_vtab_stages_on_the_vtab1k_reader(plugin, tmp_path):
    root = tmp_path / "vtab-1k"
    # No test images yet: a selection stage that read the test split would fail.
    _write_vtab_task(root / "mytask", with_test_images=False)
    config = _config(
        datasets=[
            {"dataset": "vtab", "root": str(root), "options": {"task": "mytask", "check_files": False}}
        ],
        protocols=["vtab"],
        grid={"train.weight_decay": [0.0, 0.01]},
        vtab={"final_seeds": [1]},
    )
    first = run_sweep(config, tmp_path / "out")
    assert sum(n.startswith("vtab-select") for n in first["ran"]) == 2
    assert len(first["failed"]) == 1 and first["failed"][0]["run"].startswith("vtab-final")
    _write_vtab_task(root / "mytask", with_test_images=True)
    second = run_sweep(config, tmp_path / "out")
    (final,) = second["ran"]
    config_json = json.loads((tmp_path / "out" / RUNS_DIR / final / "config.json").read_text())
    assert config_json["run"]["dataset_options"] == {
        "source": "vtab",
        "options": {"task": "mytask", "check_files": False},
    }
    results = _results(tmp_path / "out")
    record = results[final][0]
    assert record["dataset"] == "vtab:mytask" and record["split"] == "test"
    # batch 8, 2 epochs: train800 (8 items) is 1 step an epoch, train800val200 (12 items) 2 steps.
    assert record["steps"] == 4
    assert all(r[0]["steps"] == 2 for name, r in results.items() if name.startswith("vtab-select"))


def test_sweep_survives_an_unwritable_error_file_and_still_writes_its_summary(plugin, tmp_path, monkeypatch):
    import errno

    from vlprompt.core import io as io_utils

    real = io_utils.os.fsync

    def no_space_for_error_files(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{ERROR_NAME}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(io_utils.os, "fsync", no_space_for_error_files)
    summary = run_sweep(_config(datasets=["sweeptest:colours", "sweeptest:broken"]), tmp_path)
    assert len(summary["ran"]) == 1 and len(summary["failed"]) == 1
    assert "could not be written" in summary["failed"][0]["error"]
    assert json.loads((tmp_path / "summary.json").read_text())["failed"] == summary["failed"]


def test_vtab_stage_datasets_load_without_importing_the_sweep():
    code = (
        "import sys; from vlprompt.data.registry import DATASETS, list_datasets; "
        "names = list_datasets(); assert 'vtab-select' in names and 'vtab-final' in names, names; "
        "assert 'vlprompt.sweep' not in sys.modules; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr
