"""Report tables built from `load_results`' frame with pandas groupby: few-shot, base-to-new, domain shift
and VTAB-1k.

A table is a long frame of cells (method, column, mean, std, n, runs): accuracy in %, mean +- sample std
over seeds, n the seeds with a number, runs the folders behind the cell. Derived cells (HM, the targets'
mean, VTAB group means) are computed from other cells' means and have no std and n = 0.

Base-to-new HM is the harmonic mean of the AVERAGED base and new accuracies (not the mean of per-seed HMs).
Numbers from different backbones never share a table: a task whose runs used several backbones gets one table
per backbone. A folder of unrelated runs therefore reports as it is, grouped by task (and protocol, shots) and
backbone; two plain runs (no sweep.json) that would fill the same cell become two rows named by their folders,
while two runs of one sweep doing so is an error (the sweep's labels should have told them apart).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

from vlprompt.core.errors import VlpromptError

VTAB_GROUPS = ("natural", "specialized", "structured")
CELL_COLUMNS = ["method", "column", "mean", "std", "n", "runs"]


@dataclass
class Table:
    """One report table: its cells (long frame, CELL_COLUMNS) and, per method, its extra text columns."""

    slug: str
    title: str
    kind: str  # fewshot | base2new | shift | vtab | segmentation
    backbone: str
    columns: list[str]
    cells: pd.DataFrame
    extra: pd.DataFrame  # index: method; one column per extra text column (may have none)
    note: str = ""

    @property
    def methods(self) -> list[str]:
        return sorted(self.cells["method"].unique())


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def _column_of(frame: pd.DataFrame, name: str, default: object) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series(default, index=frame.index, dtype=object)


def _strip_part(dataset: str) -> str:
    for suffix in ("/base", "/new"):
        if dataset.endswith(suffix):
            return dataset[: -len(suffix)]
    return dataset


def _shots_column(shots: int) -> str:
    """0 shots means the whole training split."""
    return "all" if int(shots) == 0 else str(shots)


def _task_name(dataset: str) -> str:
    return dataset.replace(":", "/").rstrip("/").rsplit("/", 1)[-1]


def harmonic_mean(base: float | None, new: float | None) -> float | None:
    if base is None or new is None or pd.isna(base) or pd.isna(new):
        return None
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def _per_backbone(group: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The group's runs per backbone, in backbone order."""
    return sorted(group.groupby("backbone", sort=False), key=lambda kv: kv[0])


def _tables_of(kind: str, chosen: pd.DataFrame, keys: list[str]) -> Iterator[tuple[str, str, str, pd.DataFrame]]:
    """(backbone, slug, title, records) per table: records grouped by ``keys`` then by backbone."""
    if chosen.empty:
        return
    groups = [
        ((kind, *(k if isinstance(k, tuple) else (k,))), g) for k, g in chosen.groupby(keys, sort=False)
    ]
    for key, group in sorted(groups, key=lambda kv: str(kv[0])):
        per_backbone = _per_backbone(group)
        for backbone, records in per_backbone:
            parts = [str(k) for k in key]
            slug = _slug("_".join(parts + ([backbone] if len(per_backbone) > 1 else [])))
            yield backbone, slug, " · ".join(parts[1:]), records


def _plain_runs_apart(records: pd.DataFrame) -> pd.DataFrame:
    """Plain runs (not from a sweep) that would share a cell get rows of their own, labelled 'method (folder)':
    they are separate experiments a user ran by hand, not seeds of one configuration. Called once a table's
    records have their ``column``, before cells and extra columns are computed from the labels."""
    keys = ["label", "column", "seed"]
    plain = ~_column_of(records, "sweep", False).fillna(False).astype(bool)
    clash = records.duplicated(keys, keep=False) & plain
    if not clash.any():
        return records
    clashing_runs = set(records.loc[clash, "run"])
    apart = plain & records["run"].isin(clashing_runs)
    return records.assign(label=records["label"].where(~apart, records["label"] + " (" + records["run"] + ")"))


def _cells(records: pd.DataFrame, slug: str) -> pd.DataFrame:
    """Mean, sample std and count over seeds of accuracy (%) per (method label, column); runs in folder order.

    A record without an accuracy (e.g. New for a class-tied head) still traces to its folder but adds no
    value. Two records for one cell and seed (after ``_plain_runs_apart``) are an error: one of them would
    silently win."""
    keys = ["label", "column", "seed"]
    twice = records.duplicated(keys)
    if twice.any():
        group = records.groupby(keys, sort=False, dropna=False).ngroup()
        first, second = records[group == group[twice].iloc[0]].iloc[:2].to_dict("records")
        raise VlpromptError(
            f"Two runs of a sweep give the same number for table '{slug}', row '{second['label']}', column "
            f"'{second['column']}', seed {second['seed']}: '{first['run']}' and '{second['run']}'. "
            "Remove one of them, or give their sweep entries different labels."
        )
    percent = records.assign(percent=100.0 * records["accuracy"].astype(float))
    cells = percent.groupby(["label", "column"], sort=False).agg(
        mean=("percent", "mean"), std=("percent", "std"), n=("percent", "count"), runs=("run", list)
    )
    cells.loc[cells["n"] == 1, "std"] = 0.0
    return cells.reset_index().rename(columns={"label": "method"})[CELL_COLUMNS]


def _derived(rows: list[tuple[str, str, float | None, list[str]]]) -> pd.DataFrame:
    """Cells computed from other cells' means: (method, column, value, runs); no std, n = 0."""
    frame = pd.DataFrame(rows, columns=["method", "column", "mean", "runs"])
    return frame.assign(mean=frame["mean"].astype(float), std=float("nan"), n=0)[CELL_COLUMNS]


def _wide(cells: pd.DataFrame, field: str) -> pd.DataFrame:
    return cells.pivot(index="method", columns="column", values=field)


def _runs_of(runs: pd.DataFrame, method: str, columns: list[str]) -> list[str]:
    present = [c for c in columns if c in runs.columns and isinstance(runs.at[method, c], list)]
    return sorted({folder for c in present for folder in runs.at[method, c]})


def _mean_if_complete(means: pd.DataFrame, method: str, columns: list[str]) -> float | None:
    """The mean of the row's means over ``columns``; None unless every one of them has a number."""
    values = means.reindex(columns=columns).loc[method]
    return None if values.isna().any() or not columns else float(values.mean())


def _table(
    slug: str,
    title: str,
    kind: str,
    backbone: str,
    columns: list[str],
    cells: pd.DataFrame,
    extra: pd.DataFrame | None = None,
    note: str = "",
) -> Table:
    methods = sorted(cells["method"].unique())
    extra = extra if extra is not None else pd.DataFrame(index=pd.Index(methods, name="method"))
    return Table(slug, title, kind, backbone, columns, cells.reset_index(drop=True), extra, note)


def fewshot_tables(results: pd.DataFrame) -> list[Table]:
    """Rows: methods; columns: shots; mean ± std over seeds of test accuracy."""
    chosen = results[
        (_column_of(results, "protocol", None) == "fewshot")
        & (_column_of(results, "split", None) == "test")
        & (results["stage"] == "run")
    ]
    tables = []
    for backbone, slug, title, records in _tables_of("fewshot", chosen, ["dataset"]):
        records = _plain_runs_apart(records.assign(column=records["shots"].map(_shots_column)))
        shots = sorted({int(k) for k in records["shots"]}, key=lambda k: (k == 0, k))
        tables.append(
            _table(
                slug,
                f"Few-shot: {title}",
                "fewshot",
                backbone,
                [_shots_column(k) for k in shots],
                _cells(records, slug),
                note="Columns: shots per class ('all': the whole training split); test accuracy (%).",
            )
        )
    return tables


def base2new_tables(results: pd.DataFrame) -> list[Table]:
    """Base / New / HM per method, HM from the averaged base and new accuracies."""
    split = _column_of(results, "split", None)
    chosen = results[(_column_of(results, "protocol", None) == "base2new") & split.isin(["base", "new"])]
    chosen = chosen.assign(
        base_dataset=chosen["dataset"].map(_strip_part), shots_key=chosen["shots"].map(lambda k: f"{k}-shot")
    )
    tables = []
    seen_name = "New names seen in training"
    for backbone, slug, title, records in _tables_of("base2new", chosen, ["base_dataset", "shots_key"]):
        records = _plain_runs_apart(records.assign(column=records["split"].map({"base": "Base", "new": "New"})))
        cells = _cells(records, slug)
        means, runs = _wide(cells, "mean"), _wide(cells, "runs")
        hm = [
            (
                m,
                "HM",
                harmonic_mean(means.get("Base", {}).get(m), means.get("New", {}).get(m)),
                _runs_of(runs, m, ["Base", "New"]),
            )
            for m in means.index
        ]
        seen = _column_of(records, "saw_new_classnames", False).fillna(False).astype(bool)
        extra = seen.groupby(records["label"]).any().map({True: "yes", False: "no"})
        extra = extra.rename_axis("method").to_frame(seen_name)
        tables.append(
            _table(
                slug,
                f"Base-to-new: {title}",
                "base2new",
                backbone,
                ["Base", "New", "HM"],
                pd.concat([cells, _derived(hm)]),
                extra,
                note="HM = harmonic mean of the averaged Base and New accuracies (%). New is — for methods "
                "whose trained tensors are tied to the base classes.",
            )
        )
    return tables


def shift_tables(results: pd.DataFrame) -> list[Table]:
    """Rows: methods; columns: the source (its own test split) then each target, and the targets' mean."""
    split = _column_of(results, "split", None)
    chosen = results[(_column_of(results, "protocol", None) == "shift") & split.isin(["source", "target"])]
    is_source = chosen["split"] == "source"
    source_of = chosen[is_source].groupby("run")["dataset"].last()
    source = chosen["run"].map(source_of).fillna(_column_of(chosen, "source", "?").fillna("?"))
    chosen = chosen.assign(
        source_key=source,
        shots_key=chosen["shots"].map(lambda k: f"{k}-shot"),
        column=chosen["dataset"].where(~is_source, chosen["dataset"] + " (source)"),
    )
    tables = []
    for backbone, slug, title, records in _tables_of("shift", chosen, ["source_key", "shots_key"]):
        cells = _cells(_plain_runs_apart(records), slug)
        named = sorted(cells["column"].unique())
        sources = [c for c in named if c.endswith("(source)")]
        targets = [c for c in named if not c.endswith("(source)")]
        means, runs = _wide(cells, "mean"), _wide(cells, "runs")
        mean_cells = [
            (m, "Targets mean", _mean_if_complete(means, m, targets), _runs_of(runs, m, targets))
            for m in means.index
        ]
        tables.append(
            _table(
                slug,
                f"Domain shift: {title}",
                "shift",
                backbone,
                [*sources, *targets, "Targets mean"],
                pd.concat([cells, _derived(mean_cells)]),
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


def vtab_tables(results: pd.DataFrame) -> list[Table]:
    """Final-stage VTAB runs: rows methods, columns tasks, plus group means when the tasks are VTAB's own."""
    chosen = results[(results["stage"] == "final") & (_column_of(results, "split", None) == "test")]
    chosen = chosen.assign(table="VTAB-1k", column=chosen["dataset"].map(_task_name))
    groups = vtab_task_groups()
    tables = []
    for backbone, slug, _, records in _tables_of("vtab", chosen, ["table"]):
        cells = _cells(_plain_runs_apart(records), slug)
        tasks = sorted(cells["column"].unique())
        standard = bool(tasks) and all(t in groups for t in tasks)
        group_columns: list[str] = []
        if standard:
            order = {name: i for i, name in enumerate(groups)}
            tasks.sort(key=lambda t: (VTAB_GROUPS.index(groups[t]), order[t]))
            means, runs = _wide(cells, "mean"), _wide(cells, "runs")
            derived = []
            for name in VTAB_GROUPS:
                members = [t for t in tasks if groups[t] == name]
                if members:
                    group_columns.append(name.capitalize())
                    derived += [
                        (
                            m,
                            name.capitalize(),
                            _mean_if_complete(means, m, members),
                            _runs_of(runs, m, members),
                        )
                        for m in means.index
                    ]
            cells = pd.concat([cells, _derived(derived)]) if derived else cells
        seeds = cells.groupby("method")["n"].max().map(str).to_frame("Seeds")
        tables.append(
            _table(
                slug,
                "VTAB-1k (selected on val200, final train800val200 → test)",
                "vtab",
                backbone,
                tasks + group_columns,
                cells,
                seeds,
                note="Hyper-parameters chosen per task on val200 only; group means are means of the task "
                "means (%).",
            )
        )
    return tables


SEG_METRICS = ("mIoU", "mAcc", "aAcc")


def segmentation_tables(results: pd.DataFrame) -> list[Table]:
    """Segmentation runs: rows methods; columns mIoU, mAcc, aAcc on the run's own test split, then mIoU on each
    style-shift target; one table per (source dataset, shots)."""
    split = _column_of(results, "split", None)
    chosen = results[split.isin(["test", "source", "target"]) & (results["stage"] == "run")]
    is_source = chosen["split"] != "target"
    chosen = chosen.assign(
        source_key=_column_of(chosen, "source", None).where(~is_source, chosen["dataset"]).fillna(chosen["dataset"]),
        shots_key=chosen["shots"].map(lambda k: f"{_shots_column(k)}-image"),
    )
    tables = []
    for backbone, slug, title, records in _tables_of("segmentation", chosen, ["source_key", "shots_key"]):
        own = records[records["split"] != "target"]
        targets = records[records["split"] == "target"]
        long = [own.assign(accuracy=own[m], column=m) for m in SEG_METRICS if m in own.columns]
        if not targets.empty:
            long.append(targets.assign(accuracy=targets["mIoU"], column=targets["dataset"] + " mIoU"))
        cells = _cells(_plain_runs_apart(pd.concat(long)), slug)
        target_columns = sorted(c for c in cells["column"].unique() if c not in SEG_METRICS)
        tables.append(_table(
            slug, f"Segmentation: {title}", "segmentation", backbone, [*SEG_METRICS, *target_columns], cells,
            note="mIoU, mAcc (class means) and aAcc (pixel accuracy) in %, from one confusion matrix over the test "
            "split at the original image size; target columns: mIoU on style-shifted data, unchanged prompts.",
        ))
    return tables


def build_tables(results: pd.DataFrame) -> list[Table]:
    """Every table the results support, in report order: few-shot, base-to-new, shift, VTAB, segmentation."""
    dense = _column_of(results, "task_type", None) == "segmentation"
    segmentation = segmentation_tables(results[dense])
    results = results[~dense]
    return [
        *fewshot_tables(results),
        *base2new_tables(results),
        *shift_tables(results),
        *vtab_tables(results),
        *segmentation,
    ]
