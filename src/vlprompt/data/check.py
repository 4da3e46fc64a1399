"""Up-front validation of a dataset on disk (`vlprompt data check NAME ROOT`): every problem at once, not the first.

It runs the same parse and checks as loading for training (bad paths and labels, class-name mismatches,
duplicates, empty classes, missing files) and then decodes every image with PIL, so a corrupt file is found
before a run spends an hour reaching it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlprompt.core.errors import DataError
from vlprompt.data.formats import segmasks
from vlprompt.data.formats.catalog import FORMATS, parse_dataset
from vlprompt.data.formats.common import ERROR, ParsedDataset, Problem, display_path, structural_problems
from vlprompt.data.formats.seg_catalog import SEG_FORMATS, parse_segmentation
from vlprompt.data.formats.segmasks import ParsedSegmentation

logger = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """The outcome of a check: ``ok`` is False when any problem is an error (warnings do not stop training)."""

    name: str
    root: str
    problems: list[Problem] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != ERROR]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, limit: int | None = None) -> str:
        """Human-readable report: summary, then every problem as 'file:line: severity: message'."""
        root = self.summary.get("root", self.root)
        lines = [
            f"Dataset {self.name} at {root}"
            + (f" (format {self.summary['format']})" if "format" in self.summary else "")
        ]
        if "classes" in self.summary:
            lines.append(f"  classes: {self.summary['classes']}")
        for split, info in self.summary.get("splits", {}).items():
            role = f" [{info['role']}]" if info.get("role") else ""
            source = f" ({display_path(info['file'], root)})" if info.get("file") else ""
            spread = (
                f", {info['classes_present']} classes with images, {info['min_per_class']}-{info['max_per_class']} per class"
                if info["images"] and "classes_present" in info
                else ""
            )
            lines.append(f"  {split}{role}{source}: {info['images']} images{spread}")
        if "images_decoded" in self.summary:
            lines.append(f"  images decoded: {self.summary['images_decoded']}")
        shown = self.problems if limit is None else self.problems[:limit]
        lines.append(f"Problems: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        lines += [f"  {p.format(root)}" for p in shown]
        if len(shown) < len(self.problems):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        lines.append("Result: OK" if self.ok else "Result: FAILED (fix the errors above before training)")
        return "\n".join(lines)


def check_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    decode: bool = True,
    workers: int | None = None,
    **options: Any,
) -> CheckReport:
    """Validate dataset ``name`` under ``root`` and collect every problem (see module docstring).

    Datasets that are not files on disk (the offline world) are loaded and summarised only.
    """
    options.pop("check_files", None)  # a check always looks for every file
    segmentation = name in SEG_FORMATS
    if not segmentation and name not in FORMATS:
        return _check_generated(name, root, **options)
    try:
        parsed = (parse_segmentation if segmentation else parse_dataset)(name, root, **options)
    except DataError as error:
        return CheckReport(name, str(root), [Problem(str(root), None, str(error), "missing")])
    if segmentation:
        problems, summary = _check_segmentation(parsed, decode)
    else:
        problems, summary = _check_images(parsed, decode, workers)
    problems.sort(key=lambda p: (p.file, p.line or 0))
    return CheckReport(name, str(parsed.root), problems, summary)


def _check_images(parsed: ParsedDataset, decode: bool, workers: int | None) -> tuple[list[Problem], dict]:
    """A classification dataset: the structural checks, then every image decoded once."""
    problems = parsed.problems + structural_problems(parsed, check_files=True)
    summary = _summary(parsed)
    if decode:
        summary["images_decoded"], corrupt = _decode_all(parsed, workers)
        problems += corrupt
    return problems, summary


def _check_segmentation(parsed: ParsedSegmentation, decode: bool) -> tuple[list[Problem], dict]:
    """A segmentation dataset: its structural checks, then every (image, mask) pair opened (segmasks.py)."""
    problems = parsed.problems + segmasks.structural_problems(parsed)
    summary = {"format": parsed.format, "root": str(parsed.root), "classes": len(parsed.classnames), "splits": {
        role: {"role": role, "file": None, "images": len(pairs)} for role, pairs in parsed.splits.items()}}
    if decode:
        summary["images_decoded"], found = segmasks.decode_problems(parsed)
        problems += found
    return problems, summary


def _check_generated(name: str, root: str | Path | None, **options: Any) -> CheckReport:
    from vlprompt.data.registry import load_dataset

    try:
        task = load_dataset(name, root, **options)
    except DataError as error:
        return CheckReport(name, str(root), [Problem(str(root), None, str(error))])
    splits = {
        role: ds
        for role, ds in (("train", task.train), ("val", task.val), ("test", task.test))
        if ds is not None
    }
    summary = {
        "root": str(root or ""),
        "classes": task.labels.num_classes,
        "splits": {role: _split_info(ds.labels, role, None) for role, ds in splits.items()},
    }
    return CheckReport(name, str(root or ""), [], summary)


def _decode_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None. verify() checks the container, load() the pixel data
    (a truncated JPEG passes verify and fails load)."""
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # noqa: BLE001 - any decoder failure means the file is unusable
        return f"{type(error).__name__}: {error}"
    return None


def _decode_all(parsed: ParsedDataset, workers: int | None) -> tuple[int, list[Problem]]:
    """Decode each distinct existing image once (VTAB's train800val200 repeats train800), on a few threads;
    missing files are already reported by the structural checks."""
    first_seen: dict[str, tuple[str, int | None]] = {}
    for split, data in parsed.splits.items():
        for sample in data.samples:
            if sample.path not in first_seen:
                first_seen[sample.path] = parsed.locate(split, sample)
    paths = [p for p in first_seen if (parsed.image_root / p).is_file()]
    workers = workers or min(8, os.cpu_count() or 1)
    logger.info("Decoding %d images of %s with %d threads", len(paths), parsed.name, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda rel: _decode_problem(parsed.image_root / rel), paths, chunksize=64))
    problems = []
    for rel, why in zip(paths, outcomes):
        if why is not None:
            file, line = first_seen[rel]
            problems.append(Problem(file, line, f"image '{rel}' cannot be decoded ({why})", "corrupt"))
    return len(paths), problems


def _split_info(labels: list[int], role: str | None, file: Path | None) -> dict:
    counts = Counter(labels)
    return {
        "role": role,
        "file": str(file) if file is not None else None,
        "images": len(labels),
        "classes_present": len(counts),
        "min_per_class": min(counts.values()) if counts else 0,
        "max_per_class": max(counts.values()) if counts else 0,
    }


def _summary(parsed: ParsedDataset) -> dict:
    role_of = {split: role for role, split in parsed.roles.items()}
    return {
        "format": parsed.format,
        "root": str(parsed.root),
        "image_root": str(parsed.image_root),
        "classes": parsed.num_classes,
        "splits": {
            split: _split_info([s.label for s in data.samples], role_of.get(split), data.file)
            for split, data in parsed.splits.items()
        },
    }
