"""Write a world task to disk in a distributed dataset layout (ImageFolder, VTAB-1k txt, CoOp's split JSON or,
for segmentation tasks, the segfolder image + mask layout).

This makes every README workflow runnable offline as written: the files are real PNGs (or JPEGs) read back
through the same format readers and validator as a user's own data. ``image_size`` resizes the world's small
renders (e.g. to 224 px, to measure decoding at the size a ViT-B/16 reads).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from PIL import Image

from vlprompt.core.errors import ConfigError
from vlprompt.core.io import atomic_write_text, check_writable_dir
from vlprompt.data.base import ImageDataset
from vlprompt.data.registry import load_dataset

FORMATS = ("imagefolder", "vtab", "coop", "segfolder")
IMAGE_FORMATS = {"png": ".png", "jpeg": ".jpg"}


def _write_images(dataset: ImageDataset, folder: Path, names: list[str], by_class: bool, image_size: int | None,
                  image_format: str) -> list[tuple[str, int]]:
    """Save each image; returns (path relative to the dataset root, label) per image."""
    rows = []
    suffix = IMAGE_FORMATS[image_format]
    for index in range(len(dataset)):
        image, label = dataset[index]
        if image_size is not None:
            image = image.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
        relative = Path(names[label] if by_class else "images") / f"{dataset.ids[index].replace('/', '_')}{suffix}"
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if image_format == "jpeg":
            image.save(target, quality=90)
        else:
            image.save(target)
        rows.append((relative.as_posix(), label))
    return rows


def export_world_task(task_name: str, out: str | Path, fmt: str = "imagefolder", per_class: int = 16,
                      seed: int = 0, image_size: int | None = None, image_format: str = "png",
                      overwrite: bool = False) -> Path:
    """Export ``world-<task>`` (or a full dataset name) to ``out``; returns the dataset root to pass as root=.
    ``image_size`` (pixels, square) resizes every image; ``image_format`` is 'png' or 'jpeg'.

    A non-empty ``out`` is refused (two exports into one tree would merge their classes) unless ``overwrite``,
    which removes it first."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format = {fmt!r} is not allowed; choose one of {list(FORMATS)}.")
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"export image_format = {image_format!r} is not allowed; choose one of "
                          f"{list(IMAGE_FORMATS)}.")
    if image_size is not None and image_size < 1:
        raise ConfigError(f"export image_size = {image_size} must be a positive number of pixels.")
    images = {"image_size": image_size, "image_format": image_format}
    name = task_name if task_name.startswith("world-") else f"world-{task_name}"
    target = Path(out)
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"The export folder '{target}' is not empty; exporting into it would merge two tasks' classes and "
                "files. Choose an empty or new --out, or pass --overwrite to replace its content."
            )
        shutil.rmtree(target)
    out = check_writable_dir(out, "export folder")
    if fmt == "segfolder":
        return _export_segfolder(name, out, per_class, seed, **images)
    if fmt == "imagefolder":
        task = load_dataset(name, train_per_class=per_class, val_per_class=max(per_class // 4, 1),
                            test_per_class=per_class, seed=seed)
        names = [c.replace(" ", "_") for c in task.labels.classnames]
        for split, data in (("train", task.train), ("val", task.val), ("test", task.test)):
            _write_images(data.with_transform(None), out / split, names, by_class=True, **images)
        return out
    if fmt == "coop":
        return _export_coop(name, out, per_class, seed, images)
    # VTAB-1k: 800 train + 200 val images whatever the class count, as the benchmark defines them.
    task = load_dataset(name, train_per_class=math.ceil(1000 / len(task_classes(name))),
                        val_per_class=1, test_per_class=per_class, seed=seed)
    folder = out / name
    train_rows = _write_images(task.train.with_transform(None), folder, [], by_class=False, **images)
    test_rows = _write_images(task.test.with_transform(None), folder, [], by_class=False, **images)
    lines = {
        "train800": train_rows[:800],
        "val200": train_rows[800:1000],
        "train800val200": train_rows[:1000],
        "test": test_rows,
    }
    for split, rows in lines.items():
        atomic_write_text(folder / f"{split}.txt", "".join(f"{path} {label}\n" for path, label in rows))
    atomic_write_text(folder / "classnames.txt", "".join(f"{c}\n" for c in task.labels.classnames))
    return out


def _export_segfolder(name: str, out: Path, images_per_split: int, seed: int, image_size: int | None,
                      image_format: str) -> Path:
    """A world segmentation task (``world-seg``, ``world-seg-<style>``) in the ``segfolder`` layout: images/<split>,
    masks/<split> (PNG class indices; resized by nearest neighbour) and classes.txt; ``images_per_split`` images in
    train and test, a quarter of that in val."""
    if not name.startswith("world-seg"):
        raise ConfigError(f"The segfolder layout holds segmentation tasks; '{name}' classifies. Export world-seg or "
                          "world-seg-<style>, or use --format imagefolder / vtab for it.")
    task = load_dataset(name, train_images=images_per_split, val_images=max(images_per_split // 4, 1),
                        test_images=images_per_split, seed=seed)
    suffix = IMAGE_FORMATS[image_format]
    for split, data in (("train", task.train), ("val", task.val), ("test", task.test)):
        for index in range(len(data)):
            image, mask = data[index]
            if image_size is not None:
                image = image.resize((image_size, image_size), Image.BICUBIC)
                mask = mask.resize((image_size, image_size), Image.NEAREST)
            stem = data.ids[index].replace("/", "_")
            for folder, picture, kind in (("images", image, suffix), ("masks", mask, ".png")):
                target = out / folder / split / f"{stem}{kind}"
                target.parent.mkdir(parents=True, exist_ok=True)
                picture.save(target, **({"quality": 90} if kind == ".jpg" else {}))
    atomic_write_text(out / "classes.txt", "".join(f"{c}\n" for c in task.labels.classnames))
    return out


def coop_names(task_name: str) -> tuple[str, str]:
    """(split-file name, folder) of a world task in the CoOp layout: world-object -> (WorldObject, world_object)."""
    parts = task_name.split("-")
    return "".join(part.capitalize() for part in parts), "_".join(parts)


def _export_coop(name: str, out: Path, per_class: int, seed: int, images: dict) -> Path:
    """CoOp's layout: <out>/<folder>/images/<raw class>/<image> and split_zhou_<Name>.json holding
    {"train"|"val"|"test": [[path relative to images/, label, raw class name], ...]}, with raw class names
    underscored as CoOp's released split files write them (readers turn '_' back into spaces)."""
    task = load_dataset(name, train_per_class=per_class, val_per_class=max(per_class // 4, 1),
                        test_per_class=per_class, seed=seed)
    split_name, folder_name = coop_names(name)
    folder = out / folder_name
    raw = [c.replace(" ", "_") for c in task.labels.classnames]
    document = {}
    for split, data in (("train", task.train), ("val", task.val), ("test", task.test)):
        rows = _write_images(data.with_transform(None), folder / "images", raw, by_class=True, **images)
        document[split] = [[path, label, raw[label]] for path, label in rows]
    atomic_write_text(folder / f"split_zhou_{split_name}.json", json.dumps(document, indent=4) + "\n")
    return out


def task_classes(name: str) -> list[str]:
    return load_dataset(name, train_per_class=1, val_per_class=0, test_per_class=1).labels.classnames
