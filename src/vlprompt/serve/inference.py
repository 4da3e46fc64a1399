"""Inference on files: the inputs a user names (an image, a folder, a CSV of paths) and the predictions written
back (printed lines, CSV or JSON). The prediction itself is eval/image_predict.py's."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from vlprompt.core.errors import DataError, VlpromptError
from vlprompt.core.io import atomic_write_json, atomic_write_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CSV_PATH_COLUMNS = ("path", "image", "file", "filename")


def collect_inputs(source: str | Path) -> list[Path]:
    """An image file, a folder (searched recursively, sorted), or a CSV with a path column (relative paths
    are read from the CSV's folder)."""
    source = Path(source)
    if source.is_dir():
        found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DataError(f"Folder '{source}' holds no images ({', '.join(IMAGE_SUFFIXES)}), searched recursively.")
        return found
    if not source.exists():
        raise DataError(f"'{source}' does not exist; pass an image, a folder of images or a CSV with a 'path' column.")
    if source.suffix.lower() == ".csv":
        return [path for path, _ in read_csv_rows(source, ())]
    if source.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"'{source}' is neither an image ({', '.join(IMAGE_SUFFIXES)}), a folder, nor a .csv file.")
    return [source]


def read_csv_rows(path: Path, extra_columns: Sequence[str]) -> list[tuple[Path, dict]]:
    """(image path, requested extra fields) per CSV row; one clear error for a missing column."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        path_column = next((c for c in CSV_PATH_COLUMNS if c in header), None)
        missing = [c for c in extra_columns if c not in header]
        if path_column is None or missing:
            need = ["path", *extra_columns]
            raise DataError(f"'{path}' has the columns {header or '(none)'}; it needs {', '.join(need)} (header row).")
        rows = []
        for line, row in enumerate(reader, start=2):
            value = (row.get(path_column) or "").strip()
            if not value:
                raise DataError(f"'{path}' line {line}: the '{path_column}' field is empty.")
            image = Path(value) if Path(value).is_absolute() else path.parent / value
            rows.append((image, {c: (row.get(c) or "").strip() for c in extra_columns}))
    if not rows:
        raise DataError(f"'{path}' has a header but no rows.")
    return rows


def format_predictions(records: list[dict]) -> str:
    """One line per image: input, then label (probability) pairs."""
    lines = []
    for record in records:
        pairs = ", ".join(f"{label} ({prob:.3f})" for label, prob in zip(record["labels"], record["probs"]))
        task = f" [{record['task']}]" if "task" in record else ""
        lines.append(f"{record['input']}{task}: {pairs}")
    return "\n".join(lines)


def write_predictions(records: list[dict], path: str | Path) -> Path:
    """CSV (input[, task], label_1, prob_1, ...) or JSON (the records), chosen by the suffix."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return atomic_write_json(path, records)
    if path.suffix.lower() != ".csv":
        raise VlpromptError(f"Output '{path}': write predictions to a .csv or a .json file.")
    k = max((len(r["labels"]) for r in records), default=0)
    head = ["input", *(["task"] if any("task" in r for r in records) else [])]
    header = head + [f"{name}_{i + 1}" for i in range(k) for name in ("label", "prob")]
    rows = [header]
    for record in records:
        row = [str(record.get(column, "")) for column in head]
        for label, prob in zip(record["labels"], record["probs"]):
            row += [label, f"{prob:.6f}"]
        rows.append(row)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return atomic_write_text(path, buffer.getvalue())
