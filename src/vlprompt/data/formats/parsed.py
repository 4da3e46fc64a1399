"""The parsed form every on-disk format produces: samples with their file and line, and the problems found.

A format module parses its split files into a :class:`ParsedDataset` and records what it finds wrong as
:class:`Problem` objects instead of stopping at the first one, so that loading (which refuses errors) and
``vlprompt data check`` (which lists them all) read the same parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlprompt.data.base import DEFAULT_TEMPLATE
from vlprompt.data.formats.problems import ERROR, Problem
from vlprompt.data.formats.splits import ROLES, roles_of

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


@dataclass(slots=True)
class Sample:
    """One labelled image: ``path`` is normalised, relative to the image root and '/'-separated."""

    path: str
    label: int
    line: int | None = None


@dataclass
class SplitData:
    """The samples of one split. ``file`` is the split file they came from (None for a folder listing)."""

    samples: list[Sample]
    file: Path | None = None


@dataclass
class ParsedDataset:
    """A dataset as read from disk, before it becomes a TaskData.

    ``splits`` holds every split the format defines (VTAB has four files); ``roles`` says which of them serve as
    train / val / test for this load. A format whose split names are the roles leaves ``roles`` out and gets
    ``splits.roles_of`` (the rule every such format follows); VTAB maps its files onto roles itself.
    ``empty_class_severity`` is "warning" where the protocol itself leaves classes without training images
    (VTAB-1k's 800 images over up to 397 classes). ``test_only`` datasets (domain-shift
    targets) have no train split: their TaskData gets an empty train set and ``meta["test_only"] = True``.
    ``class_locations`` says where each class is defined (a class-list line, a class folder), so that an empty
    class can be reported there.
    """

    name: str
    format: str
    root: Path
    image_root: Path
    classnames: list[str]
    splits: dict[str, SplitData]
    roles: dict[str, str] | None = None
    templates: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])
    problems: list[Problem] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    empty_class_severity: str = ERROR
    class_source: Path | None = None
    class_locations: dict[int, tuple[str, int | None]] = field(default_factory=dict)
    test_only: bool = False

    def __post_init__(self) -> None:
        if self.roles is None:
            self.roles = roles_of(self.splits, self.test_only)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split_file(self, split: str) -> Path | None:
        data = self.splits.get(split)
        return data.file if data is not None else None

    def locate(self, split: str, sample: Sample) -> tuple[str, int | None]:
        """Where to point a user for ``sample``: its split-file line, else the image file itself."""
        data = self.splits[split]
        if data.file is not None:
            return str(data.file), sample.line
        return str(self.image_root / sample.path), None

    def disjoint_pairs(self) -> list[tuple[str, str]]:
        """Pairs of splits that must share no image: every pair of roles (a test image in training is leakage)."""
        used = [self.roles[role] for role in ROLES if self.roles.get(role) in self.splits]
        pairs = [(a, b) for i, a in enumerate(used) for b in used[i + 1 :] if a != b]
        test = self.roles.get("test")
        for split in self.splits:
            if test in self.splits and split not in used:
                pairs.append((split, test))
        return pairs

