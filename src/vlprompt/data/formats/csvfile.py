"""A user's own images listed in CSV: ``path,label`` rows, header optional.

Either one CSV per split (``<root>/train.csv``, ``test.csv``, optional ``val.csv``) or a single CSV (``file=`` or
a root that is the CSV) with an optional ``split`` column; a single CSV without one is split reproducibly by
``seed``. Labels are integers or class names: integers index the ``classnames`` file when one is given (else the
classes are 0..max), names must appear in it (else the classes are the sorted distinct names). Image paths are
relative to ``image_root`` (default: the CSV's folder).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from vlprompt.core.config import option
from vlprompt.core.errors import DataError
from vlprompt.data.formats.common import (
    DEFAULT_TEMPLATE,
    ROLES,
    ParsedDataset,
    Problem,
    Sample,
    SeededSplitOptions,
    SplitData,
    labels_in_range,
    names_by_label,
    normalise_relpath,
    parse_int,
    read_classnames_file,
    read_text,
    resolve_option_path,
    split_pool,
)

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
PATH_COLUMNS = ("path", "image", "image_path", "filename", "file")
LABEL_COLUMNS = ("label", "class", "target", "classname", "class_name")
LAYOUT = "<root>/train.csv and <root>/test.csv (val.csv optional), or one CSV with columns path,label[,split]"


@dataclass
class CsvOptions(SeededSplitOptions):
    """file: a single CSV (relative to root); image_root: folder the paths are relative to; classnames: a
    class-name file; fractions and seed split a single CSV that has no split column."""

    config_name = "csv"

    file: str | None = option(None, help="a single CSV listing every split (relative to root)")
    image_root: str | None = option(None, help="folder the image paths are relative to (default: the CSV's folder)")
    classnames: str | None = option(None, help="a class-name file, one name per line (integer labels index it)")
    template: str | None = option(None, help="the hand-crafted prompt template with {} for the class name")


@dataclass
class _Row:
    file: Path
    line: int
    path: str | None
    label: str
    split: str | None


def _read_csv(path: Path, problems: list[Problem]) -> tuple[list[_Row], bool]:
    """Rows of one CSV and whether it has a split column."""
    text = read_text(path, problems)
    if text is None:
        return [], False
    rows: list[_Row] = []
    columns = {"path": 0, "label": 1, "split": None}
    reader = csv.reader(io.StringIO(text, newline=""))
    short: list[tuple[int, list[str]]] = []
    try:
        for record in reader:
            cells = [cell.strip() for cell in record]
            if not any(cells):
                continue
            if reader.line_num == 1 and _names_columns(cells) and not _is_header(cells):
                # A header that names some columns but not both path and label: one error, not one per row.
                wanted = "label" if {c.lower() for c in cells} & set(PATH_COLUMNS) else "path"
                names = ", ".join(LABEL_COLUMNS if wanted == "label" else PATH_COLUMNS)
                problems.append(Problem(str(path), 1, f"the header {record!r} has no {wanted} column; name one "
                                        f"column {names}", "format"))
                return [], False
            if reader.line_num == 1 and _is_header(cells):
                lowered = [cell.lower() for cell in cells]
                columns = {
                    "path": next(lowered.index(c) for c in PATH_COLUMNS if c in lowered),
                    "label": next(lowered.index(c) for c in LABEL_COLUMNS if c in lowered),
                    "split": lowered.index("split") if "split" in lowered else None,
                }
                continue
            if reader.line_num == 1 and len(cells) >= 3:
                columns["split"] = 2
            needed = max(c for c in columns.values() if c is not None)
            if len(cells) <= needed:
                short.append((reader.line_num, record))
                continue
            rel, why = normalise_relpath(cells[columns["path"]])
            if why is not None:
                problems.append(Problem(str(path), reader.line_num, why, "path"))
            split = cells[columns["split"]] if columns["split"] is not None else None
            rows.append(_Row(path, reader.line_num, rel, cells[columns["label"]], split))
    except csv.Error as error:
        problems.append(Problem(str(path), reader.line_num, f"not readable as CSV ({error})"))
    if short:
        line, record = short[0]
        more = f" (and {len(short) - 1} more rows like it)" if len(short) > 1 else ""
        problems.append(Problem(str(path), line, f"expected path,label columns, got {record!r}{more}"))
    return rows, columns["split"] is not None


def _names_columns(cells: list[str]) -> bool:
    """Whether a first row reads as a header: it names a known column and holds no image path."""
    lowered = {cell.lower() for cell in cells}
    known = set(PATH_COLUMNS) | set(LABEL_COLUMNS) | {"split"}
    return bool(lowered & known) and not any("." in cell or "/" in cell for cell in cells)


def _is_header(cells: list[str]) -> bool:
    lowered = {cell.lower() for cell in cells}
    return bool(lowered & set(PATH_COLUMNS)) and bool(lowered & set(LABEL_COLUMNS))


def _locate_files(root: Path, options: CsvOptions) -> tuple[Path, dict[str, Path] | Path]:
    """(folder, {split: csv}) for per-split files, or (folder, csv) for one file."""
    if root.is_file():
        return root.parent, root
    if options.file is not None:
        single = resolve_option_path(options.file, root)
        if not single.is_file():
            raise DataError(f"csv: file '{single}' does not exist. Expected {LAYOUT}.")
        return root, single
    per_split = {split: root / f"{split}.csv" for split in ROLES if (root / f"{split}.csv").is_file()}
    if per_split:
        return root, per_split
    candidates = sorted(root.glob("*.csv")) if root.is_dir() else []
    if len(candidates) == 1:
        return root, candidates[0]
    found = (
        f"found {len(candidates)} CSV files; name one with file=<name>" if candidates else "found no CSV file"
    )
    raise DataError(f"csv: in '{root}' {found}. Expected {LAYOUT}.")


def parse_csv(root: Path, options: CsvOptions) -> ParsedDataset:
    folder, located = _locate_files(root, options)
    problems: list[Problem] = []
    rows_by_split: dict[str, list[_Row]] = {}
    meta: dict = {}
    if isinstance(located, dict):
        for split, path in located.items():
            rows_by_split[split], _ = _read_csv(path, problems)
        if "test" not in located:
            problems.append(Problem(str(folder / "test.csv"), None, "test.csv is missing", "missing"))
        files = dict(located)
    else:
        rows, has_split = _read_csv(located, problems)
        files = {split: located for split in ROLES}
        if has_split:
            for row in rows:
                split = SPLIT_NAMES.get((row.split or "").lower())
                if split is None:
                    problems.append(
                        Problem(
                            str(located),
                            row.line,
                            f"split {row.split!r} is not one of {', '.join(ROLES)}",
                            "format",
                        )
                    )
                    continue
                rows_by_split.setdefault(split, []).append(row)
        else:
            rows_by_split = {"all": rows}
    image_root = resolve_option_path(options.image_root, folder) if options.image_root else folder
    classnames, labelled, class_source = _label_rows(folder, options, rows_by_split, problems)
    if "all" in labelled:
        labelled, meta["seeded_split"] = split_pool(labelled.pop("all"), options)
    splits = {split: SplitData(labelled[split], files.get(split)) for split in ROLES if split in labelled}
    parsed = ParsedDataset(
        name=f"csv:{folder.name}",
        format="csv",
        root=folder,
        image_root=image_root,
        classnames=classnames,
        splits=splits,
        templates=[options.template or DEFAULT_TEMPLATE],
        problems=problems,
        meta=meta,
        class_source=class_source,
    )
    labels_in_range(parsed)
    return parsed


def _label_rows(
    folder: Path, options: CsvOptions, rows_by_split: dict[str, list[_Row]], problems: list[Problem]
) -> tuple[list[str], dict[str, list[Sample]], Path | None]:
    """Class names and labelled samples. Labels are all integers or all names; in a file that mixes them the
    minority kind is reported at its line."""
    all_rows = [row for rows in rows_by_split.values() for row in rows]
    class_source = resolve_option_path(options.classnames, folder) if options.classnames else None
    names: dict[int, tuple[str, int]] = {}
    if class_source is not None:
        names, _ = read_classnames_file(class_source, problems)
    integers = sum(parse_int(row.label) is not None for row in all_rows)
    integer_mode = integers * 2 >= len(all_rows) if all_rows else True
    if integer_mode and names:
        classnames = names_by_label(names)
    elif integer_mode:
        found = [value for row in all_rows if (value := parse_int(row.label)) is not None]
        classnames = names_by_label({}, max(found) + 1 if found else 0)
    elif names:
        classnames = [names[i][0] for i in sorted(names)]
    else:
        classnames = sorted({row.label for row in all_rows})
    index_of = {name: label for label, name in enumerate(classnames)}
    labelled: dict[str, list[Sample]] = {}
    first_label: dict[str, tuple[int, _Row]] = {}  # path -> the first row that labelled it, over every split
    for split, rows in rows_by_split.items():
        samples = labelled.setdefault(split, [])
        for row in rows:
            if integer_mode:
                label = parse_int(row.label)
                if label is None:
                    problems.append(
                        Problem(
                            str(row.file),
                            row.line,
                            f"label {row.label!r} is not an integer (most labels here are)",
                            "label",
                        )
                    )
            else:
                label = index_of.get(row.label)
                if label is None:
                    source = class_source.name if class_source is not None else "the class list"
                    problems.append(
                        Problem(
                            str(row.file),
                            row.line,
                            f"class name {row.label!r} is not in {source}",
                            "classname",
                        )
                    )
            if label is None or row.path is None:
                continue
            earlier = first_label.setdefault(row.path, (label, row))
            if earlier[0] != label:
                problems.append(_two_labels(row, earlier[1]))
                continue
            samples.append(Sample(row.path, label, row.line))
    return classnames, labelled, class_source


def _two_labels(row: _Row, first_row: _Row) -> Problem:
    """One image under two labels: found here, before a seeded split can send the two rows to different splits
    (where they would read as leakage rather than as the labelling mistake they are)."""

    def named(at: _Row) -> str:
        where = f"line {at.line}" if at.file == row.file else f"{at.file.name} line {at.line}"
        return f"'{at.label}' ({where})"

    return Problem(
        str(row.file), row.line,
        f"image '{row.path}' is listed under two labels: {named(first_row)} and {named(row)}; keep "
        "the row with the right label and delete the other",
        "duplicate",
    )
