"""Segmentation dataset names for data on disk (ade20k, segfolder, segcsv), registered with the data registry;
``vlprompt data check`` reads them through ``parse_segmentation`` (data/check.py)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlprompt.core.config import build_config
from vlprompt.data.base import TaskData
from vlprompt.data.formats import ade20k, segfolder
from vlprompt.data.formats.build import check_command, dataset_root
from vlprompt.data.formats.segmasks import ParsedSegmentation, build_segmentation_task
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
    path = dataset_root(name, root, entry.layout, folder_only=True)
    return entry.parse(path, build_config(entry.options, options, where=f"dataset {name}"))


def _register(name: str) -> None:
    def load(root: str | None = None, **options: Any) -> TaskData:
        return build_segmentation_task(parse_segmentation(name, root, **options),
                                       check_command(name, root, options))

    load.__doc__ = f"Load segmentation dataset '{name}' from disk. Expected layout: {SEG_FORMATS[name].layout}."
    register_dataset(name)(load)


for _name in SEG_FORMATS:
    _register(_name)
