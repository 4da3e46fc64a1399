"""Seeded k-shot subsets and base/new class splits, persisted as canonical JSON index files.

An index file records relative ids (sorted), the shots and seed, and a checksum of the source split, so the
same subset is re-used across methods and machines, and a changed split is detected instead of silently
sampling something else.
"""
from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import torch

from vlprompt.core.errors import DataError
from vlprompt.core.io import atomic_write_json, read_json
from vlprompt.core.seeding import derived_seed
from vlprompt.data.base import ImageDataset, LabelSpace, TaskData

log = logging.getLogger(__name__)


def split_checksum(dataset: ImageDataset) -> str:
    digest = hashlib.sha256()
    for item_id, label in sorted(zip(dataset.ids, dataset.labels)):
        digest.update(f"{item_id}\t{label}\n".encode())
    return digest.hexdigest()


def sample_few_shot(dataset: ImageDataset, shots: int, seed: int, num_classes: int | None = None) -> list[int]:
    """Indices of ``shots`` items per class (all items of a class with fewer), sorted by id within a class."""
    if shots < 1:
        raise DataError(f"shots = {shots}: a few-shot subset needs at least 1 shot per class.")
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(dataset.labels):
        by_class.setdefault(label, []).append(index)
    classes = range(num_classes) if num_classes is not None else sorted(by_class)
    chosen: list[int] = []
    for label in classes:
        members = sorted(by_class.get(label, []), key=lambda i: dataset.ids[i])
        if not members:
            raise DataError(
                f"Class {label} of '{dataset.name}' has no images to sample {shots} shots from. Check the split "
                "file for this class, or drop the class."
            )
        if len(members) < shots:
            log.warning("class %d of %s has only %d images (< %d shots); using all", label, dataset.name,
                        len(members), shots)
        generator = torch.Generator().manual_seed(derived_seed(seed, label, shots))
        take = torch.randperm(len(members), generator=generator)[: min(shots, len(members))]
        chosen.extend(members[i] for i in sorted(take.tolist()))
    return chosen


def few_shot_indices(
    dataset: ImageDataset, shots: int, seed: int, index_path: str | Path | None = None, num_classes: int | None = None
) -> list[int]:
    """Sample once and write the index file; later calls read it back (and verify the split's checksum)."""
    checksum = split_checksum(dataset)
    if index_path is not None and Path(index_path).exists():
        path = Path(index_path)
        record = read_json(path, "this few-shot index is damaged: delete it to resample.", DataError)
        if record.get("source_checksum") != checksum:
            raise DataError(
                f"Few-shot index '{path}' was sampled from a different version of split '{dataset.name}' (checksum "
                f"{str(record.get('source_checksum'))[:12]}..., now {checksum[:12]}...). The split file changed: "
                "delete the index to resample, or restore the original split."
            )
        position = {item_id: i for i, item_id in enumerate(dataset.ids)}
        missing = [item_id for item_id, _ in record["items"] if item_id not in position]
        if missing:
            raise DataError(f"Few-shot index '{path}' names items not in the split, e.g. {missing[0]!r}.")
        return [position[item_id] for item_id, _ in record["items"]]
    indices = sample_few_shot(dataset, shots, seed, num_classes)
    if index_path is not None:
        items = sorted([dataset.ids[i], dataset.labels[i]] for i in indices)
        atomic_write_json(
            index_path,
            {"dataset": dataset.name, "shots": shots, "seed": seed, "source_checksum": checksum, "items": items},
        )
        position = {item_id: i for i, item_id in enumerate(dataset.ids)}
        indices = [position[item_id] for item_id, _ in items]
    return indices


def few_shot_task(task: TaskData, shots: int, seed: int, index_dir: str | Path | None = None) -> TaskData:
    """k shots per class for training and min(k, 4) for validation; test is left whole. (Segmentation: k
    images, see ``LabelSpace.sampling_classes``.)"""
    n = task.labels.sampling_classes
    index_dir = Path(index_dir) if index_dir is not None else None
    name = task.name.replace(":", "_").replace("/", "_")

    def path(split: str) -> Path | None:
        return index_dir / f"{name}_{split}_{shots}shot_seed{seed}.json" if index_dir is not None else None

    train = task.train.subset(few_shot_indices(task.train, shots, seed, path("train"), n))
    val = None
    if task.val is not None:
        val_shots = min(shots, 4)
        val = task.val.subset(few_shot_indices(task.val, val_shots, seed, path("val"), n))
    meta = {**task.meta, "shots": shots, "seed": seed}
    return TaskData(task.name, task.labels, train, task.test, val, meta)


def base_new_split(task: TaskData) -> tuple[TaskData, TaskData]:
    """Sorted labels; base = first ceil(n/2) classes, new = the rest; each relabelled from 0."""
    n = task.labels.num_classes
    cut = math.ceil(n / 2)
    halves = []
    for part, labels in (("base", list(range(cut))), ("new", list(range(cut, n)))):
        mapping = {old: new for new, old in enumerate(labels)}
        space: LabelSpace = task.labels.subset(labels)
        name = f"{task.name}/{part}"
        halves.append(
            TaskData(
                name,
                space,
                task.train.relabel(mapping, f"{task.train.name}/{part}"),
                task.test.relabel(mapping, f"{task.test.name}/{part}"),
                task.val.relabel(mapping, f"{task.val.name}/{part}") if task.val is not None else None,
                {**task.meta, "classes": part},
            )
        )
    return halves[0], halves[1]
