"""VTAB-1k as distributed (JPEG + txt): ``<root>/<task>/{train800,val200,train800val200,test}.txt``.

Each line is ``relative/path.jpg label`` with the path relative to the task folder. ``split="select"`` trains on
train800 and validates on val200 (hyper-parameter selection); ``split="final"`` trains on train800val200 with no
validation split. Both test on test. Class counts of the 19 tasks are data (``vtab_tasks.json``), so a label
beyond them is caught even when no file uses the top class.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from vlprompt.core.errors import DataError
from vlprompt.data.formats.common import (
    DEFAULT_TEMPLATE,
    ERROR,
    WARNING,
    ParsedDataset,
    Problem,
    SplitData,
    labels_in_range,
    names_by_label,
    packaged_table,
    parse_int,
    parse_list_file,
    read_classnames_file,
    resolve_option_path,
)

FILES = ("train800", "val200", "train800val200", "test")
ROLES = {
    "select": {"train": "train800", "val": "val200", "test": "test"},
    "final": {"train": "train800val200", "test": "test"},
}
LAYOUT = "<root>/<task>/{train800,val200,train800val200,test}.txt with lines 'relative/path.jpg label'"


@lru_cache(maxsize=1)
def vtab_tasks() -> dict[str, dict]:
    """Known VTAB-1k tasks -> {"num_classes", "group"} (from vtab_tasks.json)."""
    return packaged_table("vtab_tasks.json")


@dataclass
class VtabOptions:
    """task: the task folder under root (or empty when root is the task folder); num_classes overrides the table;
    classnames: a text/JSON file of class names; template: the hand-crafted text template for CLIP methods."""

    task: str = ""
    split: Literal["select", "final"] = "select"
    num_classes: int | None = None
    classnames: str | None = None
    template: str | None = None


def _task_folder(root: Path, task: str) -> tuple[Path, str]:
    if task and (root / task).is_dir():
        return root / task, task
    if any((root / f"{name}.txt").is_file() for name in FILES):
        return root, task or root.name
    if not task:
        raise DataError(
            f"vtab: '{root}' holds no VTAB split files; name the task folder with task=<name>. Expected {LAYOUT}."
        )
    raise DataError(f"vtab: task folder '{root / task}' does not exist. Expected {LAYOUT}.")


def parse_vtab(root: Path, options: VtabOptions) -> ParsedDataset:
    folder, task = _task_folder(root, options.task)
    problems: list[Problem] = []
    roles = ROLES[options.split]
    splits: dict[str, SplitData] = {}
    for name in FILES:
        list_file = folder / f"{name}.txt"
        if not list_file.is_file():
            needed = name in roles.values()
            hint = f"; split={options.split} needs it" if needed else ""
            problems.append(
                Problem(
                    str(list_file),
                    None,
                    f"split file {name}.txt is missing{hint}",
                    "missing",
                    ERROR if needed else WARNING,
                )
            )
            continue
        splits[name] = parse_list_file(
            list_file, problems, "relative/path.jpg label", parse_int, "label {value!r} is not an integer"
        )
    known = vtab_tasks().get(task, {})
    count = options.num_classes or known.get("num_classes")
    if count is None:
        labels = [s.label for data in splits.values() for s in data.samples]
        count = max(labels) + 1 if labels else 0
    names: dict[int, tuple[str, int]] = {}
    class_source = None
    if options.classnames:
        class_source = resolve_option_path(options.classnames, folder)
        names, _ = read_classnames_file(class_source, problems)
        if names and len(names) != count:
            problems.append(
                Problem(str(class_source), None, f"{len(names)} class names for {count} classes", "classname")
            )
    parsed = ParsedDataset(
        name=f"vtab:{task}",
        format="vtab",
        root=folder,
        image_root=folder,
        classnames=names_by_label(names, count),
        splits=splits,
        roles=roles,
        templates=[options.template or DEFAULT_TEMPLATE],
        problems=problems,
        meta={"vtab_task": task, "vtab_group": known.get("group"), "vtab_split": options.split},
        empty_class_severity=WARNING,
        class_source=class_source,
    )
    labels_in_range(parsed)
    return parsed
