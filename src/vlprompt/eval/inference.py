"""Prediction on images a user has: a file, a folder, a CSV of paths, or PIL images in Python.

Images go through the backbone's own eval transform, in batches, on the chosen device; the output is the
top-k class names with softmax probabilities per image, printable or written as CSV / JSON.
"""
from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from vlprompt.core.errors import DataError, VlpromptError
from vlprompt.core.io import atomic_write_json, atomic_write_text
from vlprompt.data.transforms import eval_transform

log = logging.getLogger(__name__)

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


def load_image(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    try:
        with Image.open(item) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise DataError(f"Image '{item}' does not exist.") from None
    except Image.DecompressionBombError as error:
        # PIL refuses images over twice Image.MAX_IMAGE_PIXELS before decoding them: a small file that would
        # expand to gigabytes is a classic way to exhaust a server's memory.
        raise DataError(
            f"Image '{item}' was refused as a possible decompression bomb ({error}). If it is a genuine image, "
            "downscale it first, or raise PIL.Image.MAX_IMAGE_PIXELS when calling vlprompt from Python."
        ) from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"Image '{item}' cannot be read ({error}); the file is not an image or is damaged.") from None


def image_batches(items: Sequence, preprocess, batch_size: int, progress: bool) -> Iterator[torch.Tensor]:
    """Preprocessed batches [b, 3, H, W] of ``items`` (PIL images or paths), with a progress bar on a terminal."""
    transform = eval_transform(preprocess)
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", disable=None if progress else True, leave=False):
        yield torch.stack([transform(load_image(item)) for item in items[start : start + batch_size]])


def topk_records(logits: torch.Tensor, classnames: Sequence[str], topk: int) -> list[dict]:
    probs = logits.float().softmax(dim=-1)
    k = min(topk, probs.shape[-1])
    values, indices = probs.topk(k, dim=-1)
    return [
        {"labels": [classnames[i] for i in idx.tolist()], "probs": [round(float(v), 6) for v in vals]}
        for vals, idx in zip(values, indices)
    ]


@torch.no_grad()
def predict_images(method, images: Sequence, topk: int = 5, batch_size: int = 64, device: str | None = None,
                   progress: bool = False) -> list[dict]:
    """Top-k class names and probabilities for each image (PIL image or path), in input order.

    Each record is {"input": the path (or the index of a PIL image), "labels": [...], "probs": [...]}.
    """
    if topk < 1:
        raise VlpromptError(f"topk = {topk}: ask for at least 1 label.")
    if device is not None:
        from vlprompt.core.distributed import resolve_device

        method.to(resolve_device(device))
    method.eval()
    target = next((p.device for p in method.parameters()), torch.device("cpu"))
    items = list(images)
    records = []
    for batch in image_batches(items, method.backbone.preprocess, batch_size, progress):
        logits = method.predict({"image": batch.to(target)})
        records += topk_records(logits.cpu(), method.labels.classnames, topk)
    for index, (item, record) in enumerate(zip(items, records)):
        record["input"] = index if isinstance(item, Image.Image) else str(item)
    return records


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
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return atomic_write_text(path, buffer.getvalue())
