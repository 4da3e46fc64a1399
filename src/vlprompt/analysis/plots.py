"""PNG plots for reports: accuracy vs shots (bars per method for a single shot count), base/new/HM bars, NMI per
block over training.

They read the report's tables and `load_results`' frame (NMI curves from each run folder's metrics.jsonl).
matplotlib is an optional extra (`pip install 'vlprompt[plots]'`); the report writes its tables without it.

Figures are ``matplotlib.figure.Figure`` objects drawn by the Agg canvas, so plotting never touches pyplot's
global state or needs a display.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from vlprompt.artifacts.files import METRICS_NAME
from vlprompt.core.errors import missing_extra

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as error:
    raise missing_extra("matplotlib", "plots", "Report plots need matplotlib") from error

if TYPE_CHECKING:
    from vlprompt.analysis.tables import Table

log = logging.getLogger(__name__)

NMI_PREFIX = "nmi/block"
DPI = 120


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def plot_accuracy_vs_shots(series: dict[str, list[tuple[int, float, float]]], title: str, path: Path) -> Path:
    """One line per method: (shots, mean, std) points, shots on a log2 axis, std as error bars."""
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.add_subplot()
    # The colour cycle has 10 entries; a second marker/line style keeps 11+ methods distinguishable.
    styles = [("o", "-"), ("s", "--"), ("^", ":")]
    for index, (label, points) in enumerate(sorted(series.items())):
        points = sorted(p for p in points if p[1] is not None)
        if not points:
            continue
        shots, means, stds = zip(*points)
        marker, line = styles[(index // 10) % len(styles)]
        axes.errorbar(
            shots, means, yerr=[s or 0.0 for s in stds], marker=marker, linestyle=line, capsize=3, label=label
        )
    axes.set_xscale("log", base=2)
    all_shots = sorted({p[0] for points in series.values() for p in points})
    axes.set_xticks(all_shots, [str(s) for s in all_shots])
    axes.set_xlabel("shots per class")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    return _save(figure, path)


def plot_base_new_bars(
    rows: list[tuple[str, float | None, float | None, float | None]], title: str, path: Path
) -> Path:
    """Grouped bars per method: Base, New, HM (a missing value draws no bar)."""
    figure = Figure(figsize=(max(6.4, 0.9 * len(rows) + 2), 4.2), layout="constrained")
    axes = figure.add_subplot()
    width = 0.27
    for offset, (name, index) in zip((-width, 0.0, width), (("Base", 1), ("New", 2), ("HM", 3))):
        xs = [i + offset for i, row in enumerate(rows) if row[index] is not None]
        ys = [row[index] for row in rows if row[index] is not None]
        axes.bar(xs, ys, width, label=name)
    axes.set_xticks(range(len(rows)), [row[0] for row in rows], rotation=30, ha="right", fontsize=8)
    axes.set_xlim(-0.6, len(rows) - 0.4)
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_accuracy_bars(rows: list[tuple[str, float | None, float | None]], title: str, path: Path) -> Path:
    """One horizontal bar per method (mean, std as an error bar), best at the top; a missing mean draws none."""
    rows = sorted((row for row in rows if row[1] is not None), key=lambda row: row[1])
    figure = Figure(figsize=(6.4, max(2.4, 0.28 * len(rows) + 1.2)), layout="constrained")
    axes = figure.add_subplot()
    axes.barh(range(len(rows)), [row[1] for row in rows], xerr=[row[2] or 0.0 for row in rows], capsize=2)
    axes.set_yticks(range(len(rows)), [row[0] for row in rows], fontsize=8)
    for index, row in enumerate(rows):
        axes.annotate(f"{row[1]:.1f}", (row[1], index), xytext=(3, 0), textcoords="offset points", va="center",
                      fontsize=7)
    axes.set_xlim(0, 105)
    axes.set_xlabel("test accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def read_nmi(folder: Path) -> dict[int, list[tuple[int, float]]]:
    """block -> [(step, nmi)] from a run's metrics.jsonl (the last record wins for a repeated step)."""
    path = Path(folder) / METRICS_NAME
    if not path.exists():
        return {}
    by_block: dict[int, dict[int, float]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():  # bad bytes: a skipped line
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: the rest of the file is still good
        for key, value in record.items():
            if key.startswith(NMI_PREFIX) and key[len(NMI_PREFIX) :].isdigit():
                by_block.setdefault(int(key[len(NMI_PREFIX) :]), {})[int(record.get("step", 0))] = float(
                    value
                )
    return {block: sorted(steps.items()) for block, steps in by_block.items()}


def plot_nmi(curves: dict[str, list[dict[int, list[tuple[int, float]]]]], title: str, path: Path) -> Path:
    """One panel per block; per method, the mean over its runs of NMI at each logged step."""
    blocks = sorted({b for runs in curves.values() for run in runs for b in run})
    columns = min(4, len(blocks))
    rows = math.ceil(len(blocks) / columns)
    figure = Figure(figsize=(3.2 * columns, 2.6 * rows), layout="constrained")
    for position, block in enumerate(blocks):
        axes = figure.add_subplot(rows, columns, position + 1)
        for label, runs in sorted(curves.items()):
            by_step: dict[int, list[float]] = {}
            for run in runs:
                for step, value in run.get(block, []):
                    by_step.setdefault(step, []).append(value)
            if by_step:
                steps = sorted(by_step)
                axes.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], label=label)
        axes.set_title(f"block {block}", fontsize=9)
        axes.set_xlabel("step", fontsize=8)
        axes.set_ylabel("NMI", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        if position == 0:
            axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def _value(value: object) -> float | None:
    return None if pd.isna(value) else float(value)


def write_plots(tables: Iterable[Table], results: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    """Every plot a report shows, from its tables and `load_results`' frame: (slug or "nmi", png path)."""
    written: list[tuple[str, Path]] = []
    for table in tables:
        cells = table.cells.set_index(["method", "column"])
        if table.kind == "fewshot" and len(table.columns) == 1:
            # One shot count (the demo's 16 shots): a line per method would be a single dot; bars compare them.
            column = table.columns[0]
            bars = [(method, _value(cells.at[(method, column), "mean"]), _value(cells.at[(method, column), "std"]))
                    for method in table.methods if (method, column) in cells.index]
            title = f"{table.title}, {column if column == 'all' else column + ' shots'}"
            written.append((table.slug, plot_accuracy_bars(bars, title, out / f"{table.slug}.png")))
        elif table.kind == "fewshot":
            # 'all' (the whole split) has no place on a shots axis
            shots = cells[cells.index.get_level_values("column").str.isdigit()]
            series: dict[str, list] = {method: [] for method in table.methods}
            for (method, column), cell in shots.iterrows():
                series[method].append((int(column), _value(cell["mean"]), _value(cell["std"])))
            written.append(
                (table.slug, plot_accuracy_vs_shots(series, table.title, out / f"{table.slug}.png"))
            )
        elif table.kind == "base2new":
            means = (
                cells["mean"].unstack("column").reindex(index=table.methods, columns=["Base", "New", "HM"])
            )
            bars = [(method, *(_value(v) for v in row)) for method, row in means.iterrows()]
            written.append((table.slug, plot_base_new_bars(bars, table.title, out / f"{table.slug}.png")))
    groups: dict[tuple, dict[str, list]] = {}
    for _, run in results.drop_duplicates("run").iterrows():
        curves = read_nmi(Path(run["path"]))
        if curves:
            dataset, shots = run.get("dataset"), run.get("shots")
            key = (
                "?" if pd.isna(dataset) else dataset,
                None if pd.isna(shots) else int(shots),
                run["backbone"],
            )
            groups.setdefault(key, {}).setdefault(run["label"], []).append(curves)
    for (dataset, shots, backbone), curves in sorted(groups.items(), key=lambda kv: str(kv[0])):
        name = "".join(
            c if c.isalnum() or c in "-_." else "_" for c in f"nmi_{dataset}_{shots}shot_{backbone}"
        )
        title = f"NMI per block over training: {dataset}, {shots} shots ({backbone})"
        written.append(("nmi", plot_nmi(curves, title, out / f"{name}.png")))
    return written
