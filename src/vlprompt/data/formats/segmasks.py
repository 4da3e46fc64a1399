"""Segmentation datasets on disk: (image, label mask) pairs per split, their checks, and the TaskData they become.

Every segmentation format (ADE20K's release layout, an image + mask folder, a CSV) parses into a
``ParsedSegmentation``; loading refuses structural errors (missing files, unpaired images) at once, and
``vlprompt data check`` also opens every pair: a mask whose size differs from its image, labels outside
0..num_classes-1 (other than the ignore index), an unreadable or multi-channel mask, or an undecodable image are
each reported with the file named.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vlprompt.data.base import DEFAULT_TEMPLATE, TaskData
from vlprompt.data.formats.build import refuse_errors
from vlprompt.data.formats.images import ImageLoader
from vlprompt.data.formats.parsed import IMAGE_SUFFIXES
from vlprompt.data.formats.problems import Problem
from vlprompt.data.formats.splits import required_roles
from vlprompt.data.segmentation import MaskFileLoader, SegmentationDataset, SegmentationLabels, mask_array

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class SegPair:
    """One image and its mask, '/'-separated paths relative to the dataset root; ``line`` of a CSV, if any."""

    image: str
    mask: str
    line: int | None = None


@dataclass
class ParsedSegmentation:
    """A segmentation dataset as read from disk. ``splits`` maps a role (train / val / test) to its pairs;
    ``source`` is the file or folder to point at for a problem (the CSV, else each file itself)."""

    name: str
    format: str
    root: Path
    classnames: list[str]
    splits: dict[str, list[SegPair]]
    ignore_index: int = 255
    reduce_zero_label: bool = False
    problems: list[Problem] = field(default_factory=list)
    source: Path | None = None
    templates: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])

    def where(self, pair: SegPair, part: str) -> tuple[str, int | None]:
        if self.source is not None and pair.line is not None:
            return str(self.source), pair.line
        return str(self.root / (pair.image if part == "image" else pair.mask)), None

    def mask_value_range(self) -> tuple[int, int]:
        """Allowed stored mask values before conversion: ADE20K-style files hold 0 (other) .. num_classes."""
        return (0, len(self.classnames)) if self.reduce_zero_label else (0, len(self.classnames) - 1)


def pair_by_stem(images: list[Path], masks: list[Path], root: Path, split: str) -> tuple[list[SegPair], list[Problem]]:
    """Pairs of files with the same stem; an image without a mask (or a mask without an image) is an error."""
    mask_of = {m.stem: m for m in masks}
    image_stems = {i.stem for i in images}
    pairs, problems = [], []
    for image in images:
        mask = mask_of.get(image.stem)
        if mask is None:
            problems.append(Problem(str(image), None, f"{split} image has no mask named '{image.stem}.png'", "missing"))
            continue
        pairs.append(SegPair(image.relative_to(root).as_posix(), mask.relative_to(root).as_posix()))
    for stem, mask in sorted(mask_of.items()):
        if stem not in image_stems:
            problems.append(Problem(str(mask), None, f"{split} mask has no image named '{stem}.*'", "missing"))
    return pairs, problems


def list_files(folder: Path, suffixes) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def list_image_files(folder: Path) -> list[Path]:
    return list_files(folder, IMAGE_SUFFIXES)


def structural_problems(parsed: ParsedSegmentation) -> list[Problem]:
    """Missing files and empty required splits (cheap: no decoding)."""
    problems = []
    for role in required_roles():
        if not parsed.splits.get(role):
            problems.append(Problem(str(parsed.root), None, f"no {role} pairs were found", "missing"))
    for role, pairs in parsed.splits.items():
        for pair in pairs:
            for part, rel in (("image", pair.image), ("mask", pair.mask)):
                if not (parsed.root / rel).is_file():
                    file, line = parsed.where(pair, part)
                    problems.append(Problem(file, line, f"{role} {part} '{rel}' does not exist", "missing"))
    if not parsed.classnames:
        problems.append(Problem(str(parsed.root), None, "no class names were found", "classname"))
    return problems


def pair_problem(parsed: ParsedSegmentation, pair: SegPair) -> list[Problem]:
    """Open one pair: both readable, the mask single-channel, the same size as the image, labels in range."""
    problems = []

    def report(part: str, message: str, kind: str) -> None:
        file, line = parsed.where(pair, part)
        problems.append(Problem(file, line, message, kind))

    try:
        with Image.open(parsed.root / pair.image) as image:
            image.load()
            image_size = image.size
    except Exception as error:  # noqa: BLE001 - any decoder failure makes the file unusable
        report("image", f"image '{pair.image}' cannot be decoded ({type(error).__name__}: {error})", "corrupt")
        image_size = None
    try:
        with Image.open(parsed.root / pair.mask) as opened:
            values = mask_array(opened)
    except Exception as error:  # noqa: BLE001
        report("mask", f"mask '{pair.mask}' cannot be read as a label image ({type(error).__name__}: {error})",
               "corrupt")
        return problems
    if image_size is not None and (values.shape[1], values.shape[0]) != image_size:
        report("mask", f"mask '{pair.mask}' is {values.shape[1]}x{values.shape[0]} but its image '{pair.image}' is "
               f"{image_size[0]}x{image_size[1]}; masks must have their image's size", "size")
    low, high = parsed.mask_value_range()
    bad = np.unique(values[((values < low) | (values > high)) & (values != parsed.ignore_index)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8]) + (" ..." if bad.size > 8 else "")
        report("mask", f"mask '{pair.mask}' holds labels {shown} outside {low}..{high} (and not the ignore index "
               f"{parsed.ignore_index}); {len(parsed.classnames)} classes are defined", "label")
    return problems


def decode_problems(parsed: ParsedSegmentation, workers: int = 4) -> tuple[int, list[Problem]]:
    """Every existing pair opened once, on a few threads."""
    pairs = [p for pairs in parsed.splits.values() for p in pairs
             if (parsed.root / p.image).is_file() and (parsed.root / p.mask).is_file()]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = list(pool.map(lambda pair: pair_problem(parsed, pair), pairs))
    return len(pairs), [p for problems in found for p in problems]


def build_segmentation_task(parsed: ParsedSegmentation, check_command: str) -> TaskData:
    """The TaskData of a parsed segmentation dataset, refusing structural errors (DataError naming them)."""
    refuse_errors(parsed, parsed.problems + structural_problems(parsed), check_command)
    labels = SegmentationLabels(list(parsed.classnames), list(parsed.templates))  # ignore 255 (MaskFileLoader)
    images = ImageLoader(parsed.root)
    masks = MaskFileLoader(str(parsed.root), parsed.reduce_zero_label, parsed.ignore_index)

    def dataset(role: str) -> SegmentationDataset | None:
        pairs = parsed.splits.get(role) or []
        if not pairs:
            return None
        return SegmentationDataset([p.image for p in pairs], [p.mask for p in pairs], images, masks,
                                   name=f"{parsed.name}/{role}")

    return TaskData(parsed.name, labels, dataset("train"), dataset("test"), dataset("val"),
                    meta={"format": parsed.format, "root": str(parsed.root), "task_type": "segmentation",
                          "reduce_zero_label": parsed.reduce_zero_label,
                          "splits": {role: len(pairs) for role, pairs in parsed.splits.items()}})
