"""The segmentation task type: images with per-pixel labels, an ignore index and class names.

It is the classification task's sibling, not a second code path: a ``SegmentationDataset`` is an ``ImageDataset``
whose item is ``(image, mask)`` and whose ``task_type`` is ``"segmentation"``; a ``SegmentationLabels`` is a
``LabelSpace`` that also carries the ignore index and a palette. The Trainer, the run folder, sweeps and reports
see the same TaskData; what differs (joint transforms, the head, mIoU) is chosen by ``task_type``.

Masks are stored as label PNGs (mode "L" or "P", one class index per pixel) or produced in memory (the world).
``ignore_index`` pixels take no part in the loss or the metrics (255, as mmsegmentation and ADE20K's
``reduce_zero_label`` convention use).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image

from vlprompt.core.errors import ConfigError
from vlprompt.data.base import ImageDataset, LabelSpace

IGNORE_INDEX = 255


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours for overlays: the classic label-colormap bit interleave (class 0 black), deterministic."""
    palette = []
    for label in range(num_classes):
        r = g = b = 0
        value = label
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.append((r, g, b))
    return palette


@dataclass
class SegmentationLabels(LabelSpace):
    """Class names of a segmentation task, plus the label that means "ignore" and overlay colours.

    Class ``i`` is mask value ``i``; ``ignore_index`` (outside 0..num_classes-1) marks pixels without a label.
    """

    task_type: ClassVar[str] = "segmentation"
    ignore_index: int = IGNORE_INDEX
    palette: list = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if 0 <= self.ignore_index < self.num_classes:
            raise ConfigError(
                f"SegmentationLabels.ignore_index = {self.ignore_index} is a class index (there are "
                f"{self.num_classes} classes); use a value outside 0..{self.num_classes - 1}, e.g. 255."
            )
        if not self.palette:
            self.palette = default_palette(self.num_classes)
        self.palette = [tuple(int(c) for c in colour) for colour in self.palette]

    @property
    def sampling_classes(self) -> int:
        return 1

    def task_fields(self) -> dict:
        return {"ignore_index": self.ignore_index, "palette": [list(colour) for colour in self.palette]}

    def subset(self, labels: Sequence[int]) -> LabelSpace:
        raise ConfigError(
            "A segmentation task cannot be split into class subsets (base/new): every image holds pixels of many "
            "classes. Use the 'fewshot' or 'shift' protocol for segmentation."
        )


MaskLoader = Callable[[object], Image.Image]


class SegmentationDataset(ImageDataset):
    """(image source, mask source) pairs; an item is ``transform(image, mask)``, by default the PIL pair.

    ``labels`` (what few-shot sampling and class counts read for classification) is 0 for every item: an image
    has no single class. ``transform`` takes and returns the pair, so crops and flips stay aligned
    (data/mask_transforms.py).
    """

    task_type: ClassVar[str] = "segmentation"

    def __init__(self, sources: Sequence, masks: Sequence, load: Callable[[object], Image.Image],
                 load_mask: MaskLoader, transform: Callable | None = None, name: str = "",
                 ids: Sequence[str] | None = None) -> None:
        super().__init__(sources, [0] * len(sources), load, None, name, ids)
        if len(masks) != len(sources):
            raise ValueError("sources and masks differ in length")
        self.masks = list(masks)
        self.load_mask = load_mask
        self.transform = transform

    def __getitem__(self, index: int):
        image = self.load(self.sources[index])
        mask = self.load_mask(self.masks[index])
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask

    def subset(self, indices: Sequence[int], name: str | None = None) -> SegmentationDataset:
        return SegmentationDataset([self.sources[i] for i in indices], [self.masks[i] for i in indices], self.load,
                                   self.load_mask, self.transform, self.name if name is None else name,
                                   [self.ids[i] for i in indices])

    def relabel(self, mapping: dict[int, int], name: str | None = None) -> ImageDataset:
        raise ConfigError("A segmentation dataset cannot be relabelled into class subsets (base/new splits).")

    def with_transform(self, transform: Callable | None) -> SegmentationDataset:
        return SegmentationDataset(self.sources, self.masks, self.load, self.load_mask, transform, self.name,
                                   self.ids)


def mask_array(mask: Image.Image) -> np.ndarray:
    """A label PNG as int64 [H, W] of class indices (palette images give their indices, not colours)."""
    if mask.mode not in ("L", "P", "I", "I;16"):
        raise ValueError(f"a label mask must be a single-channel image (mode L, P or I), not mode {mask.mode!r}")
    return np.asarray(mask, dtype=np.int64)


class MaskFileLoader:
    """Reads a label PNG by path relative to ``root``, optionally applying ADE20K's ``reduce_zero_label``
    (label 0 "other" -> ignore, every other label minus 1); the file's ``ignore_index`` becomes 255, the value the
    loss, the metrics and crop padding use. Picklable for DataLoader workers."""

    def __init__(self, root: str, reduce_zero_label: bool = False, ignore_index: int = IGNORE_INDEX) -> None:
        self.root = str(root)
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index

    def __call__(self, source: str) -> Image.Image:
        from pathlib import Path

        with Image.open(Path(self.root) / source) as opened:
            values = mask_array(opened)
        if self.reduce_zero_label:
            values = reduce_zero_label(values, self.ignore_index)
        if self.ignore_index != IGNORE_INDEX:  # the library's one ignore value (training pads crops with it)
            values = np.where(values == self.ignore_index, IGNORE_INDEX, values)
        return Image.fromarray(values.astype(np.uint8), mode="L")


def reduce_zero_label(values: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """ADE20K's convention (mmsegmentation ``reduce_zero_label``): 0 -> ignore, k -> k - 1 for k >= 1."""
    out = values.astype(np.int64) - 1
    out[values == 0] = ignore_index
    out[values == ignore_index] = ignore_index  # an already-ignored pixel stays ignored
    return out


LABEL_SPACES: dict[str, type[LabelSpace]] = {"classification": LabelSpace, "segmentation": SegmentationLabels}


def label_space(task_type: str, classnames: Sequence[str], templates: Sequence[str], groups: dict,
                fields: dict) -> LabelSpace:
    """The label space a checkpoint recorded (``prompt_config.json``: task_type + task_fields)."""
    if task_type not in LABEL_SPACES:
        raise ConfigError(f"Unknown task type {task_type!r} in a checkpoint; known: {', '.join(LABEL_SPACES)}. "
                          "It was written by a newer vlprompt: upgrade to read it.")
    return LABEL_SPACES[task_type](list(classnames), list(templates), dict(groups), **fields)
