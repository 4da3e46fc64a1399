"""Result tables from run folders: few-shot, base-to-new, domain shift and VTAB, as markdown and CSV.

Every run folder holds results.json (records), config.json (resolved config, library version, backbone id)
and, for sweep runs, sweep.json (stage, variant, table label). Numbers are mean +- sample std over seeds (%);
each table's CSV lists the run folders behind every row, and trace.csv maps each number to its folders.

Base-to-new HM is the harmonic mean of the AVERAGED base and new accuracies (not the mean of per-seed HMs).
A table whose runs come from different backbones is an error (or one table per backbone on request).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vlprompt.errors import VlpromptError
from vlprompt.io_utils import atomic_write_text, check_writable_dir
from vlprompt.run_dir import CONFIG_NAME, RESULTS_NAME, SPEC_NAME

log = logging.getLogger(__name__)

VTAB_GROUPS = ("natural", "specialized", "structured")
MISSING = "—"


# ----------------------------------------------------------------------------------------------------------
# Loading run folders
# ----------------------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """One result record with what it traces to: its run folder (relative to the scanned root)."""

    folder: str
    path: Path
    record: dict
    backbone: str
    label: str
    stage: str
    variant: str

    @property
    def accuracy(self) -> float | None:
        value = self.record.get("accuracy")
        return None if value is None else 100.0 * float(value)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise VlpromptError(
            f"Cannot read '{path}' ({error}); re-run that run or remove its folder."
        ) from None


def load_runs(runs_dir: str | Path) -> list[RunRecord]:
    """Every record of every run folder under ``runs_dir``: a folder with results.json AND config.json.

    A results.json without config.json beside it is not a run (e.g. the demo's summary of its runs) and is
    skipped: every number in a table must trace to a folder holding its resolved config."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise VlpromptError(f"Runs folder '{root}' does not exist or is not a folder.")
    records: list[RunRecord] = []
    for results_path in sorted(root.rglob(RESULTS_NAME)):
        folder = results_path.parent
        name = folder.relative_to(root).as_posix()
        if not (folder / CONFIG_NAME).exists():
            log.info(
                "skipping %s: no %s beside its %s, so it is not a run folder", name, CONFIG_NAME, RESULTS_NAME
            )
            continue
        results = _read_json(results_path)
        config = _read_json(folder / CONFIG_NAME)
        spec = _read_json(folder / SPEC_NAME) if (folder / SPEC_NAME).exists() else {}
        if not isinstance(results, list) or not isinstance(config, dict):
            raise VlpromptError(
                f"'{results_path}' or its {CONFIG_NAME} is not what a run writes (a list of records and a "
                "mapping); re-run that run or remove its folder."
            )
        for record in results:
            records.append(
                RunRecord(
                    folder=name,
                    path=folder,
                    record=record,
                    backbone=str(config.get("backbone_id") or record.get("backbone")),
                    label=str(spec.get("label") or record.get("method")),
                    stage=str(spec.get("stage", "run")),
                    variant=str(spec.get("variant", "")),
                )
            )
    if not records:
        raise VlpromptError(
            f"No run results under '{root}': no folder there holds a {RESULTS_NAME} with its {CONFIG_NAME}. "
            "Point the report at a sweep's output folder or at a folder of run folders."
        )
    return records


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """Accuracies (percent) over seeds and the run folders they came from."""

    values: list[float] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        if not self.values:
            return None
        if len(self.values) == 1:
            return 0.0
        mean = self.mean
        return math.sqrt(sum((v - mean) ** 2 for v in self.values) / (len(self.values) - 1))

    def text(self) -> str:
        if self.mean is None:
            return MISSING
        return f"{self.mean:.2f}" if self.n == 1 else f"{self.mean:.2f} ± {self.std:.2f}"


@dataclass
class DerivedCell:
    """A number computed from other cells' means (HM, a VTAB group mean); traces to their folders."""

    value: float | None
    folders: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        return self.value

    @property
    def std(self) -> float | None:
        return None

    @property
    def n(self) -> int:
        return 0

    def text(self) -> str:
        return MISSING if self.value is None else f"{self.value:.2f}"


@dataclass
class Row:
    label: str
    cells: dict = field(default_factory=dict)  # column -> Cell | DerivedCell
    extra: dict = field(default_factory=dict)  # column -> text (e.g. whether new class names were seen)

    @property
    def folders(self) -> list[str]:
        return sorted({f for cell in self.cells.values() for f in cell.folders})


@dataclass
class Table:
    slug: str
    title: str
    kind: str  # fewshot | base2new | shift | vtab
    backbone: str
    columns: list[str]
    rows: list[Row]
    extra_columns: list[str] = field(default_factory=list)
    note: str = ""


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def _strip_part(dataset: str) -> str:
    for suffix in ("/base", "/new"):
        if dataset.endswith(suffix):
            return dataset[: -len(suffix)]
    return dataset


def _group_by_backbone(
    key: tuple, runs: list[RunRecord], split_backbones: bool
) -> dict[str, list[RunRecord]]:
    by_backbone: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_backbone.setdefault(run.backbone, []).append(run)
    if len(by_backbone) > 1 and not split_backbones:
        listing = "; ".join(
            f"'{backbone}' in {', '.join(sorted({r.folder for r in group})[:3])}"
            + (" ..." if len({r.folder for r in group}) > 3 else "")
            for backbone, group in sorted(by_backbone.items())
        )
        raise VlpromptError(
            f"The {key[0]} table for {'/'.join(str(k) for k in key[1:])} mixes runs of different backbones: "
            f"{listing}. Numbers from different backbones do not belong in one table: report each "
            "backbone's runs from its own folder, or pass split_backbones (--split-backbones) for one table "
            "per backbone."
        )
    return by_backbone


def _add(cells: dict, column: str, run: RunRecord, table_name: str, row: str) -> None:
    cell = cells.setdefault(column, Cell())
    seed = run.record.get("seed")
    if seed in cell.seeds:
        other = cell.folders[cell.seeds.index(seed)]
        raise VlpromptError(
            f"Two runs give the same number for table '{table_name}', row '{row}', column '{column}', "
            f"seed {seed}: '{other}' and '{run.folder}'. Remove one of them (or give their sweeps different "
            "labels)."
        )
    # A missing accuracy (e.g. New for a class-tied head) still traces to its folder but adds no value.
    if run.accuracy is not None:
        cell.values.append(run.accuracy)
    cell.folders.append(run.folder)
    cell.seeds.append(seed)


def _rows(grouped: dict[str, dict]) -> list[Row]:
    return [Row(label, cells) for label, cells in sorted(grouped.items())]


def _tables_for(
    kind: str, runs: list[RunRecord], key_of, split_backbones: bool
) -> dict[tuple, dict[str, list]]:
    """Group runs by table key, then by backbone (checked)."""
    keyed: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        keyed.setdefault((kind, *key_of(run)), []).append(run)
    return {
        key: _group_by_backbone(key, group, split_backbones)
        for key, group in sorted(keyed.items(), key=lambda kv: str(kv[0]))
    }


def _table_name(key: tuple, backbone: str, multi: bool) -> tuple[str, str]:
    parts = [str(k) for k in key]
    slug = _slug("_".join(parts + ([backbone] if multi else [])))
    return slug, " · ".join(parts[1:])


def _shots_column(shots: int) -> str:
    """0 shots means the whole training split."""
    return "all" if int(shots) == 0 else str(shots)


def fewshot_tables(runs: list[RunRecord], split_backbones: bool = False) -> list[Table]:
    """Rows: methods; columns: shots; mean ± std over seeds of test accuracy."""
    chosen = [
        r
        for r in runs
        if r.record.get("protocol") == "fewshot" and r.record.get("split") == "test" and r.stage == "run"
    ]
    tables = []
    for key, by_backbone in _tables_for(
        "fewshot", chosen, lambda r: (r.record["dataset"],), split_backbones
    ).items():
        for backbone, group in sorted(by_backbone.items()):
            slug, title = _table_name(key, backbone, len(by_backbone) > 1)
            grouped: dict[str, dict] = {}
            for run in group:
                _add(
                    grouped.setdefault(run.label, {}),
                    _shots_column(run.record["shots"]),
                    run,
                    slug,
                    run.label,
                )
            shots = sorted({int(r.record["shots"]) for r in group}, key=lambda k: (k == 0, k))
            columns = [_shots_column(k) for k in shots]
            tables.append(
                Table(
                    slug,
                    f"Few-shot: {title}",
                    "fewshot",
                    backbone,
                    columns,
                    _rows(grouped),
                    note="Columns: shots per class ('all': the whole training split); test accuracy (%).",
                )
            )
    return tables


def harmonic_mean(base: float | None, new: float | None) -> float | None:
    if base is None or new is None:
        return None
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def base2new_tables(runs: list[RunRecord], split_backbones: bool = False) -> list[Table]:
    """Base / New / HM per method, HM from the averaged base and new accuracies."""
    chosen = [
        r for r in runs if r.record.get("protocol") == "base2new" and r.record.get("split") in ("base", "new")
    ]
    tables = []

    def key_of(r: RunRecord) -> tuple:
        return _strip_part(r.record["dataset"]), f"{r.record['shots']}-shot"

    for key, by_backbone in _tables_for("base2new", chosen, key_of, split_backbones).items():
        for backbone, group in sorted(by_backbone.items()):
            slug, title = _table_name(key, backbone, len(by_backbone) > 1)
            grouped: dict[str, dict] = {}
            seen_new: dict[str, set] = {}
            for run in group:
                column = "Base" if run.record["split"] == "base" else "New"
                _add(grouped.setdefault(run.label, {}), column, run, slug, run.label)
                seen_new.setdefault(run.label, set()).add(bool(run.record.get("saw_new_classnames", False)))
            rows = []
            for label, cells in sorted(grouped.items()):
                base, new = cells.get("Base", Cell()), cells.get("New", Cell())
                cells["HM"] = DerivedCell(
                    harmonic_mean(base.mean, new.mean), sorted(set(base.folders + new.folders))
                )
                seen = seen_new[label]
                rows.append(
                    Row(label, cells, {"New names seen in training": "yes" if True in seen else "no"})
                )
            tables.append(
                Table(
                    slug,
                    f"Base-to-new: {title}",
                    "base2new",
                    backbone,
                    ["Base", "New", "HM"],
                    rows,
                    ["New names seen in training"],
                    note="HM = harmonic mean of the averaged Base and New accuracies (%). New is "
                    f"{MISSING} for methods whose trained tensors are tied to the base classes.",
                )
            )
    return tables


def shift_tables(runs: list[RunRecord], split_backbones: bool = False) -> list[Table]:
    """Rows: methods; columns: the source (its own test split) then each target, and the targets' mean."""
    chosen = [
        r
        for r in runs
        if r.record.get("protocol") == "shift" and r.record.get("split") in ("source", "target")
    ]
    source_of = {r.folder: r.record["dataset"] for r in chosen if r.record["split"] == "source"}

    def key_of(r: RunRecord) -> tuple:
        return source_of.get(r.folder, r.record.get("source", "?")), f"{r.record['shots']}-shot"

    tables = []
    for key, by_backbone in _tables_for("shift", chosen, key_of, split_backbones).items():
        for backbone, group in sorted(by_backbone.items()):
            slug, title = _table_name(key, backbone, len(by_backbone) > 1)
            grouped: dict[str, dict] = {}
            for run in group:
                column = (
                    f"{run.record['dataset']} (source)"
                    if run.record["split"] == "source"
                    else run.record["dataset"]
                )
                _add(grouped.setdefault(run.label, {}), column, run, slug, run.label)
            sources = sorted({c for cells in grouped.values() for c in cells if c.endswith("(source)")})
            targets = sorted({c for cells in grouped.values() for c in cells if not c.endswith("(source)")})
            rows = []
            for label, cells in sorted(grouped.items()):
                means = [cells[t].mean for t in targets if t in cells]
                complete = len(means) == len(targets) and all(m is not None for m in means)
                folders = sorted({f for t in targets if t in cells for f in cells[t].folders})
                cells["Targets mean"] = DerivedCell(
                    sum(means) / len(means) if complete and means else None, folders
                )
                rows.append(Row(label, cells))
            tables.append(
                Table(
                    slug,
                    f"Domain shift: {title}",
                    "shift",
                    backbone,
                    sources + targets + ["Targets mean"],
                    rows,
                    note="Trained on the source; evaluated unchanged on each target (%).",
                )
            )
    return tables


def vtab_task_groups() -> dict[str, str]:
    """VTAB-1k task name -> group (natural / specialized / structured), from the formats package's table."""
    try:
        from vlprompt.data.formats.vtab import vtab_tasks
    except ImportError:
        return {}
    return {name: spec["group"] for name, spec in vtab_tasks().items()}


def _task_name(dataset: str) -> str:
    return dataset.replace(":", "/").rstrip("/").rsplit("/", 1)[-1]


def vtab_tables(runs: list[RunRecord], split_backbones: bool = False) -> list[Table]:
    """Final-stage VTAB runs: rows methods, columns tasks, plus group means when the tasks are VTAB's own."""
    chosen = [r for r in runs if r.stage == "final" and r.record.get("split") == "test"]
    groups = vtab_task_groups()
    tables = []
    for key, by_backbone in _tables_for("vtab", chosen, lambda r: ("VTAB-1k",), split_backbones).items():
        for backbone, group in sorted(by_backbone.items()):
            slug, _ = _table_name(key, backbone, len(by_backbone) > 1)
            grouped: dict[str, dict] = {}
            for run in group:
                _add(
                    grouped.setdefault(run.label, {}), _task_name(run.record["dataset"]), run, slug, run.label
                )
            tasks = sorted({t for cells in grouped.values() for t in cells})
            standard = bool(tasks) and all(t in groups for t in tasks)
            if standard:
                order = {name: i for i, name in enumerate(groups)}
                tasks.sort(key=lambda t: (VTAB_GROUPS.index(groups[t]), order[t]))
            group_columns = [g.capitalize() for g in VTAB_GROUPS if any(groups.get(t) == g for t in tasks)]
            rows = []
            for label, cells in sorted(grouped.items()):
                if standard:
                    for name in VTAB_GROUPS:
                        members = [cells[t] for t in tasks if groups[t] == name and t in cells]
                        if not any(groups[t] == name for t in tasks):
                            continue
                        complete = len(members) == sum(groups[t] == name for t in tasks)
                        value = (
                            sum(c.mean for c in members) / len(members)
                            if complete and all(c.mean is not None for c in members)
                            else None
                        )
                        cells[name.capitalize()] = DerivedCell(
                            value, sorted({f for c in members for f in c.folders})
                        )
                rows.append(Row(label, cells, {"Seeds": str(max(c.n for c in cells.values()))}))
            tables.append(
                Table(
                    slug,
                    "VTAB-1k (selected on val200, final train800val200 → test)",
                    "vtab",
                    backbone,
                    tasks + (group_columns if standard else []),
                    rows,
                    ["Seeds"],
                    note="Hyper-parameters chosen per task on val200 only; group means are means of "
                    "the task means (%).",
                )
            )
    return tables


def build_tables(runs: list[RunRecord], split_backbones: bool = False) -> list[Table]:
    return [
        *fewshot_tables(runs, split_backbones),
        *base2new_tables(runs, split_backbones),
        *shift_tables(runs, split_backbones),
        *vtab_tables(runs, split_backbones),
    ]


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------
def table_markdown(table: Table) -> str:
    header = ["Method", *table.columns, *table.extra_columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in table.rows:
        cells = [row.cells[c].text() if c in row.cells else MISSING for c in table.columns]
        extra = [row.extra.get(c, "") for c in table.extra_columns]
        lines.append("| " + " | ".join([row.label, *cells, *extra]) + " |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def table_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["method"]
    for column in table.columns:
        header += [column, f"{column} std", f"{column} n"]
    writer.writerow(header + table.extra_columns + ["backbone", "runs"])
    for row in table.rows:
        values = [row.label]
        for column in table.columns:
            cell = row.cells.get(column)
            values += [_number(cell.mean), _number(cell.std), cell.n or ""] if cell else ["", "", ""]
        writer.writerow(
            values
            + [row.extra.get(c, "") for c in table.extra_columns]
            + [table.backbone, ";".join(row.folders)]
        )
    return buffer.getvalue()


def trace_csv(tables: Iterable[Table]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table", "method", "column", "mean", "std", "n", "backbone", "runs"])
    for table in tables:
        for row in table.rows:
            for column in table.columns:
                cell = row.cells.get(column)
                if cell is not None:
                    writer.writerow(
                        [
                            table.slug,
                            row.label,
                            column,
                            _number(cell.mean),
                            _number(cell.std),
                            cell.n or "",
                            table.backbone,
                            ";".join(cell.folders),
                        ]
                    )
    return buffer.getvalue()


def write_report(
    runs_dir: str | Path, out_dir: str | Path | None = None, split_backbones: bool = False, plots: bool = True
) -> dict[str, Path]:
    """Scan run folders, write report.md, one CSV per table, trace.csv and (optionally) PNG plots.

    Returns {name: path} of everything written.
    """
    runs_dir = Path(runs_dir)
    runs = load_runs(runs_dir)
    tables = build_tables(runs, split_backbones)
    out = check_writable_dir(Path(out_dir) if out_dir is not None else runs_dir / "report", "report folder")
    written: dict[str, Path] = {}
    figures: dict[str, list[str]] = {}
    if plots:
        from vlprompt.analysis.plots import write_plots

        for section, path in write_plots(tables, runs, out):
            written[path.name] = path
            figures.setdefault(section, []).append(path.name)
    intro = (
        f"{len({r.folder for r in runs})} run folders. Accuracy in %, mean ± sample std over seeds (a single "
        "seed shows no ±). Every number traces to its run folders in trace.csv (and each table's CSV, column "
        "'runs'); each folder holds the resolved config, library version and backbone id in config.json."
    )
    sections = [f"# Results: {runs_dir}", "", intro, ""]
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
    written["trace.csv"] = atomic_write_text(out / "trace.csv", trace_csv(tables))
    written["report.md"] = atomic_write_text(out / "report.md", "\n".join(sections).rstrip() + "\n")
    return written
