"""VTAB-1k's two stages as task views, registered as the datasets ``vtab-select`` and ``vtab-final``.

*select*: train on train800, score on val200, through a view whose test split IS the val split and which holds
no reference to the real test split. *final*: train on train800val200, test on test. They are ordinary
datasets (``load_dataset("vtab-select", source=..., options=...)``), registered by this provider module of the
dataset registry, so a run folder of either stage loads anywhere without importing the sweep first.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlprompt.core.errors import ConfigError, DataError
from vlprompt.data.base import ImageDataset, TaskData
from vlprompt.data.registry import DATASETS, load_dataset, register_dataset

VTAB_SELECT_DATASET = "vtab-select"
VTAB_FINAL_DATASET = "vtab-final"


def selection_view(task: TaskData) -> TaskData:
    """Train on train800, score on val200: the view's test split IS the val split, and the view keeps no
    reference to the real test split, so nothing trained or scored through it can read test."""
    if task.val is None:
        raise DataError(
            f"Task '{task.name}' has no val split: VTAB selection scores on val200 and never on test. "
            "Give the dataset a val split (val200.txt for VTAB-1k)."
        )
    meta = {**task.meta, "vtab_stage": "select", "scored_split": task.val.name or "val"}
    return TaskData(task.name, task.labels, task.train, task.val, None, meta)


class _UnionLoader:
    """Loads (part, source) pairs with the part's own loader; picklable for DataLoader workers."""

    def __init__(self, loaders: list[Callable]) -> None:
        self.loaders = loaders

    def __call__(self, source: tuple) -> Any:
        part, inner = source
        return self.loaders[part](inner)


def union(first: ImageDataset, second: ImageDataset, name: str) -> ImageDataset:
    """train800 + val200 = train800val200 (ids kept; each item loaded by its own split's loader)."""
    duplicates = set(first.ids) & set(second.ids)
    if duplicates:
        raise DataError(
            f"'{first.name}' and '{second.name}' share items (e.g. {min(duplicates)!r}); "
            "train800 and val200 must be disjoint."
        )
    sources = [(0, s) for s in first.sources] + [(1, s) for s in second.sources]
    return ImageDataset(
        sources,
        first.labels + second.labels,
        _UnionLoader([first.load, second.load]),
        first.transform,
        name,
        first.ids + second.ids,
    )


def final_view(task: TaskData) -> TaskData:
    """Train on train800val200, test on test, with no val split (nothing is selected in the final training).

    A task loaded as VTAB's final split (no val, ``meta["vtab_split"] == "final"``) already trains on
    train800val200; otherwise train800val200 is the union of the task's train and val splits."""
    if task.val is None and task.meta.get("vtab_split") == "final":
        trainval = task.train
    elif task.val is None:
        raise DataError(f"Task '{task.name}' has no val split to join to train for the final VTAB stage.")
    else:
        trainval = union(task.train, task.val, f"{task.train.name}+{task.val.name}")
    return TaskData(task.name, task.labels, trainval, task.test, None, {**task.meta, "vtab_stage": "final"})


def _is_vtab_format(name: str) -> bool:
    return name == "vtab" or name.startswith("vtab:")


def _stage_loader(stage: str, view: Callable[[TaskData], TaskData]) -> Callable[..., TaskData]:
    def load(root: str | None = None, source: str = "", options: dict | None = None) -> TaskData:
        if not source:
            raise ConfigError("dataset_options.source is empty: name the VTAB task's dataset.")
        options = dict(options or {})
        if _is_vtab_format(source):
            # The VTAB-1k reader picks the split files of a stage itself (select: train800/val200; final:
            # train800val200).
            options["split"] = stage
        return view(load_dataset(source, root=root, **options))

    load.__doc__ = view.__doc__
    return load


for _name, _stage, _view in (
    (VTAB_SELECT_DATASET, "select", selection_view),
    (VTAB_FINAL_DATASET, "final", final_view),
):
    if _name not in DATASETS:
        register_dataset(_name)(_stage_loader(_stage, _view))

