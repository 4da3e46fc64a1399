"""Protocol commands (`vlprompt fewshot|base2new|shift`) run a sweep and write the report's tables."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlprompt.cli import main
from vlprompt.core.errors import ConfigError
from vlprompt.sweep.protocols import protocol_sweep

SMALL = [
    "backbone=tiny:open_clip",
    "seeds=1",
    "dataset_options.train_per_class=2",
    "dataset_options.val_per_class=1",
    "dataset_options.test_per_class=2",
    "train.epochs=1",
]


def test_fewshot_command_writes_a_table_per_method(tmp_path: Path, capsys):
    code = main(["fewshot", "methods=zeroshot,coop", "dataset=world-object", "shots=1,2", *SMALL,
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| coop |" in report and "| zeroshot |" in report
    assert (tmp_path / "report" / "trace.csv").exists()
    # A second call skips the finished runs.
    assert main(["fewshot", "methods=zeroshot,coop", "dataset=world-object", "shots=1,2", *SMALL,
                 "--out", str(tmp_path)]) == 0
    assert "4 already finished" in capsys.readouterr().out
    assert "Few-shot" in out


def test_base2new_records_base_new_and_hm(tmp_path: Path, capsys):
    code = main(["base2new", "methods=coop", "dataset=world-object", "shots=1", *SMALL, "--out", str(tmp_path)])
    assert code == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "HM" in report
    results = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("results.json")]
    splits = {r["split"] for records in results for r in records}
    assert splits == {"base", "new"}
    assert all(r["saw_new_classnames"] is False for records in results for r in records)


def test_shift_needs_targets_and_checks_class_names():
    with pytest.raises(ConfigError, match="targets"):
        protocol_sweep("shift", {"methods": "coop", "dataset": "world-object"})
    with pytest.raises(ConfigError, match="unknown key 'sheets'"):
        protocol_sweep("fewshot", {"methods": "coop", "dataset": "world-object", "sheets": 1})
