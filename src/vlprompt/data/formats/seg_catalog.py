"""Segmentation dataset names for data on disk (ade20k, segfolder, segcsv), registered with the data registry, and
the check ``vlprompt data check`` runs for them (every pair opened; problems named by file)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlprompt.core.config import build_config
from vlprompt.core.errors import DataError
from vlprompt.data.base import TaskData
from vlprompt.data.formats import ade20k, segfolder
from vlprompt.data.formats.segmasks import (
    ParsedSegmentation,
    build_segmentation_task,
    decode_problems,
    structural_problems,
)
from vlprompt.data.registry import register_dataset


@dataclass(frozen=True)
class SegFormat:
    options: type
    parse: Callable[[Path, Any], ParsedSegmentation]
    layout: str


SEG_FORMATS = {
    "ade20k": SegFormat(ade20k.Ade20kOptions, ade20k.parse_ade20k, ade20k.LAYOUT),
    "segfolder": SegFormat(segfolder.SegFolderOptions, segfolder.parse_segfolder, segfolder.FOLDER_LAYOUT),
    "segcsv": SegFormat(segfolder.SegCsvOptions, segfolder.parse_segcsv, segfolder.CSV_LAYOUT),
}


def parse_segmentation(name: str, root: str | Path | None, **options: Any) -> ParsedSegmentation:
    entry = SEG_FORMATS[name]
    if root is None or str(root) == "":
        raise DataError(f"Dataset '{name}' is read from disk: give its root folder. Expected {entry.layout}.")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"Dataset root '{path}' does not exist. Dataset '{name}' expects {entry.layout}.")
    return entry.parse(path, build_config(entry.options, options, where=f"dataset {name}"))


def check_segmentation(name: str, root: str | Path | None, decode: bool = True, **options: Any):
    """Every problem of a segmentation dataset on disk, as a CheckReport (data/check.py)."""
    from vlprompt.data.check import CheckReport
    from vlprompt.data.formats.parsed import Problem

    try:
        parsed = parse_segmentation(name, root, **options)
    except DataError as error:
        return CheckReport(name, str(root), [Problem(str(root), None, str(error), "missing")])
    problems = parsed.problems + structural_problems(parsed)
    summary = {"format": parsed.format, "root": str(parsed.root), "classes": len(parsed.classnames), "splits": {
        role: {"role": role, "file": None, "images": len(pairs)} for role, pairs in parsed.splits.items()}}
    if decode:
        summary["images_decoded"], found = decode_problems(parsed)
        problems += found
    problems.sort(key=lambda p: (p.file, p.line or 0))
    return CheckReport(name, str(parsed.root), problems, summary)


def _register(name: str) -> None:
    def load(root: str | None = None, **options: Any) -> TaskData:
        extra = "".join(f" {key}={value}" for key, value in options.items())
        return build_segmentation_task(parse_segmentation(name, root, **options),
                                       f"vlprompt data check {name} {root}{extra}")

    load.__doc__ = f"Load segmentation dataset '{name}' from disk. Expected layout: {SEG_FORMATS[name].layout}."
    register_dataset(name)(load)


for _name in SEG_FORMATS:
    _register(_name)
