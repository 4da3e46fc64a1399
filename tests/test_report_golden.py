"""The pandas report against the report the Cell/Row/Table implementation wrote for the same run folders
(tests/data/report_golden/, captured before the move): every markdown line, CSV and trace row identical, and
the same plots."""

from __future__ import annotations

import pytest
from report_fixture import GOLDEN, build_mixed_runs, build_sweep_runs

from vlprompt.analysis.report import write_report


@pytest.mark.parametrize(("name", "build"), [("sweep", build_sweep_runs), ("mixed", build_mixed_runs)])
def test_report_matches_the_golden_output(tmp_path, name, build):
    pytest.importorskip("matplotlib")
    root = build(tmp_path / name)
    written = write_report(root, tmp_path / "report")
    expected = sorted(p.name for p in (GOLDEN / name).iterdir())
    assert sorted(n for n in written if not n.endswith(".png")) == expected
    for file_name in expected:
        text = written[file_name].read_text(encoding="utf-8").replace(str(root), "RUNS")
        assert text == (GOLDEN / name / file_name).read_text(encoding="utf-8"), file_name
    images = {
        line[2:].split("]")[0] for line in written["report.md"].read_text().splitlines() if line[:2] == "!["
    }
    assert {n for n in written if n.endswith(".png")} == images and len(images) == {"sweep": 5, "mixed": 2}[
        name
    ]
