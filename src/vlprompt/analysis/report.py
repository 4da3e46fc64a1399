"""Reports from run folders: report.md, one CSV per table, trace.csv and PNG plots.

Tables come from `load_results`' frame (analysis/tables.py); this module formats them. Numbers are mean +-
sample std over seeds (%); each table's CSV lists the run folders behind every row, and trace.csv maps each
number to its folders.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from vlprompt.analysis.results import load_results
from vlprompt.analysis.tables import Table, build_tables
from vlprompt.core.errors import MissingExtraError
from vlprompt.core.io import atomic_write_text, check_writable_dir

log = logging.getLogger(__name__)

MISSING = "—"


def _number(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.4f}"


def _text(cell: pd.Series) -> str:
    """Markdown text of a cell: the mean, with ± std when it averages two seeds or more."""
    if pd.isna(cell["mean"]):
        return MISSING
    return f"{cell['mean']:.2f}" if cell["n"] <= 1 else f"{cell['mean']:.2f} ± {cell['std']:.2f}"


def _indexed(table: Table) -> pd.DataFrame:
    return table.cells.set_index(["method", "column"])


def table_markdown(table: Table) -> str:
    cells = _indexed(table)
    text = {key: _text(cell) for key, cell in cells.iterrows()}
    header = ["Method", *table.columns, *table.extra.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for method in table.methods:
        row = [text.get((method, column), MISSING) for column in table.columns]
        extra = [
            str(table.extra.at[method, c]) if method in table.extra.index else "" for c in table.extra.columns
        ]
        lines.append("| " + " | ".join([method, *row, *extra]) + " |")
    return "\n".join(lines)


def _formatted(table: Table) -> pd.DataFrame:
    """The cells as CSV text: 4 decimals, empty for no number, n empty for derived cells."""
    return table.cells.assign(
        mean=table.cells["mean"].map(_number),
        std=table.cells["std"].map(_number),
        n=table.cells["n"].map(lambda n: str(n) if n else ""),
        runs=table.cells["runs"].map(";".join),
    )


def table_csv(table: Table) -> str:
    """One row per method: mean, std, n per column, the extra columns, the backbone and every run folder."""
    cells = _formatted(table).set_index(["method", "column"])
    wide = pd.DataFrame(index=pd.Index(table.methods, name="method"))
    for column in table.columns:
        for field, name in (("mean", column), ("std", f"{column} std"), ("n", f"{column} n")):
            wide[name] = cells[field].xs(column, level="column").reindex(wide.index).fillna("")
    wide = wide.join(table.extra).fillna("") if len(table.extra.columns) else wide
    runs = (
        table.cells.explode("runs").groupby("method")["runs"].agg(lambda r: ";".join(sorted(set(r.dropna()))))
    )
    wide = wide.assign(backbone=table.backbone, runs=runs.reindex(wide.index).fillna(""))
    return wide.reset_index().to_csv(index=False, lineterminator="\n")


def trace_frame(tables: Iterable[Table]) -> pd.DataFrame:
    """Every number of every table with the run folders it came from (the report's trace.csv)."""
    frames = []
    for table in tables:
        order = {column: i for i, column in enumerate(table.columns)}
        cells = _formatted(table).assign(
            table=table.slug, backbone=table.backbone, order=table.cells["column"].map(order)
        )
        frames.append(cells.sort_values(["method", "order"], kind="stable"))
    columns = ["table", "method", "column", "mean", "std", "n", "backbone", "runs"]
    return pd.concat(frames)[columns] if frames else pd.DataFrame(columns=columns)


def write_report(
    runs_dir: str | Path, out_dir: str | Path | None = None, plots: bool = True
) -> dict[str, Path]:
    """Scan run folders, write report.md, one CSV per table, trace.csv and (optionally) PNG plots.

    Without matplotlib the tables are still written; report.md says how to get the plots. Returns {name:
    path} of everything written.
    """
    runs_dir = Path(runs_dir)
    results = load_results(runs_dir)
    tables = build_tables(results)
    out = check_writable_dir(Path(out_dir) if out_dir is not None else runs_dir / "report", "report folder")
    written: dict[str, Path] = {}
    figures: dict[str, list[str]] = {}
    plots_note = ""
    if plots:
        try:
            from vlprompt.analysis.plots import write_plots
        except MissingExtraError as error:
            plots_note = f"Tables only, no plots: {error}"
            log.warning(plots_note)
        else:
            for section, path in write_plots(tables, results, out):
                written[path.name] = path
                figures.setdefault(section, []).append(path.name)
    intro = (
        f"{results['run'].nunique()} run folders. Accuracy in %, mean ± sample std over seeds (a single "
        "seed shows no ±). Every number traces to its run folders in trace.csv (and each table's CSV, "
        "column 'runs'); each folder holds the resolved config, library version and backbone id in "
        "config.json."
    )
    sections = [f"# Results: {runs_dir}", "", intro, ""]
    if plots_note:
        sections += [plots_note, ""]
    if not tables:
        sections.append("No run matched a table (few-shot, base-to-new, shift or VTAB final runs).")
    for table in tables:
        name = f"{table.slug}.csv"
        written[name] = atomic_write_text(out / name, table_csv(table))
        sections += [
            f"## {table.title}",
            "",
            f"Backbone: `{table.backbone}`. {table.note}",
            "",
            table_markdown(table),
            "",
            f"CSV: [{name}]({name})",
            "",
        ]
        sections += [f"![{image}]({image})\n" for image in figures.get(table.slug, [])]
    nmi_images = figures.get("nmi", [])
    if nmi_images:
        sections += ["## NMI between prompt and patch tokens over training", ""]
        sections += [f"![{image}]({image})\n" for image in nmi_images]
    trace = trace_frame(tables).to_csv(index=False, lineterminator="\n")
    written["trace.csv"] = atomic_write_text(out / "trace.csv", trace)
    written["report.md"] = atomic_write_text(out / "report.md", "\n".join(sections).rstrip() + "\n")
    return written
