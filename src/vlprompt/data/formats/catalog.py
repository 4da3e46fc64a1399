"""Dataset names for data on disk, registered with the data registry (which imports this module lazily).

coop:<Name> for CoOp's 11 datasets and its 4 test-only ImageNet domain-shift targets (ImageNetV2, ImageNetSketch,
ImageNetA, ImageNetR), coop for any other data in that layout (a split_zhou_<Name>.json and its images), vtab (task=...) and vtab:<task> for the 19 VTAB-1k tasks, fgvc, imagefolder and csv. Every loader takes (root, **options): options are checked against the format's options dataclass, and
``check_files=False`` skips the up-front existence check of every image (for slow network disks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlprompt.core.config import build_config
from vlprompt.core.errors import ConfigError, unknown_name
from vlprompt.data.base import TaskData
from vlprompt.data.formats import coop, csvfile, fgvc, imagefolder, vtab
from vlprompt.data.formats.common import ParsedDataset, build_task, check_command, dataset_root
from vlprompt.data.registry import register_dataset


@dataclass(frozen=True)
class FormatEntry:
    """How to read one dataset name: its options dataclass, its parser, options the name fixes, its layout."""

    options: type
    parse: Callable[[Path, Any], ParsedDataset]
    layout: str
    fixed: tuple[tuple[str, Any], ...] = ()


@dataclass
class LoadOptions:
    """Options every on-disk dataset accepts besides its format's own."""

    check_files: bool = True


FORMATS: dict[str, FormatEntry] = {}


def parse_dataset(name: str, root: str | Path | None, **options: Any) -> ParsedDataset:
    """Read a dataset's split files into a ParsedDataset (problems recorded, not raised)."""
    entry = FORMATS.get(name)
    if entry is None:
        raise unknown_name("dataset", name, FORMATS)
    path = dataset_root(name, root, entry.layout)
    fixed = dict(entry.fixed)
    clash = [key for key in fixed if key in options and options[key] != fixed[key]]
    if clash:
        raise ConfigError(f"Dataset '{name}' fixes {clash[0]}={fixed[clash[0]]!r}; drop that option.")
    config = build_config(entry.options, {**options, **fixed}, where=f"dataset {name}")
    return entry.parse(path, config)


def _register(name: str, entry: FormatEntry) -> None:
    FORMATS[name] = entry

    def load(root: str | None = None, check_files: bool = True, **options: Any) -> TaskData:
        load_options = build_config(LoadOptions, {"check_files": check_files}, where=f"dataset {name}")
        return build_task(
            parse_dataset(name, root, **options),
            check_files=load_options.check_files,
            check_command=check_command(name, root, options),
        )

    load.__doc__ = f"Load '{name}' from disk. Expected layout: {entry.layout}."
    register_dataset(name)(load)


for _name in coop.coop_datasets():
    _register(
        f"coop:{_name}",
        FormatEntry(coop.CoopOptions, coop.parse_coop, coop.expected_layout(_name), (("dataset", _name),)),
    )
_register("coop", FormatEntry(coop.CoopOptions, coop.parse_coop, coop.OWN_LAYOUT))
_register("vtab", FormatEntry(vtab.VtabOptions, vtab.parse_vtab, vtab.LAYOUT))
for _task in vtab.vtab_tasks():
    _register(
        f"vtab:{_task}", FormatEntry(vtab.VtabOptions, vtab.parse_vtab, vtab.LAYOUT, (("task", _task),))
    )
_register("fgvc", FormatEntry(fgvc.FgvcOptions, fgvc.parse_fgvc, fgvc.LAYOUT))
_register(
    "imagefolder",
    FormatEntry(imagefolder.ImageFolderOptions, imagefolder.parse_imagefolder, imagefolder.LAYOUT),
)
_register("csv", FormatEntry(csvfile.CsvOptions, csvfile.parse_csv, csvfile.LAYOUT))
