"""A user's own images in class folders: ``<root>/{train,val,test}/<class>/*`` or just ``<root>/<class>/*``.

With split folders, classes are train's folders in sorted order (val is optional). Without them, every class is
split reproducibly into train / val / test by ``seed`` (see ``seeded_split``), and the split used is recorded
in the task's meta. Class names are the folder names as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlprompt.core.config import option
from vlprompt.core.errors import DataError
from vlprompt.data.formats.common import (
    DEFAULT_TEMPLATE,
    ROLES,
    SEEDED_SPLIT_RULE,
    WARNING,
    ParsedDataset,
    Problem,
    Sample,
    SeededSplitOptions,
    SplitData,
    list_images,
    list_subfolders,
    scan_class_folders,
    split_pool,
)

LAYOUT = "<root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg (val/ optional), or <root>/<class>/*.jpg"


@dataclass
class ImageFolderOptions(SeededSplitOptions):
    """Fractions and seed apply only to the flat layout (no split folders)."""

    config_name = "imagefolder"

    template: str | None = option(None, help="the hand-crafted prompt template with {} for the class name")


def parse_imagefolder(root: Path, options: ImageFolderOptions) -> ParsedDataset:
    if not root.is_dir() or not list_subfolders(root):
        raise DataError(f"imagefolder: '{root}' has no sub-folders. Expected {LAYOUT}.")
    if (root / "train").is_dir():
        return _parse_split_folders(root, options)
    return _parse_flat(root, options)


def _class_samples(folder: Path, prefix: str, label: int) -> list[Sample]:
    return [Sample(f"{prefix}{path.name}", label) for path in list_images(folder)]


def _parse_split_folders(root: Path, options: ImageFolderOptions) -> ParsedDataset:
    problems: list[Problem] = []
    classes = [folder.name for folder in list_subfolders(root / "train")]
    label_of = {name: label for label, name in enumerate(classes)}
    splits: dict[str, SplitData] = {}
    for split in ROLES:
        split_dir = root / split
        if not split_dir.is_dir():
            if split == "test":
                problems.append(
                    Problem(
                        str(split_dir),
                        None,
                        "the test folder is missing (train/ needs a test/ beside it)",
                        "missing",
                    )
                )
            continue
        samples = scan_class_folders(
            split_dir, f"{split}/", label_of, problems,
            f"class folder '{{name}}' in {split}/ has no folder of that name in train/",
        )
        splits[split] = SplitData(samples)
    for split in (s for s in ROLES if (root / s).is_dir()):
        stray = list_images(root / split)
        if stray:
            problems.append(
                Problem(
                    str(stray[0]),
                    None,
                    f"{len(stray)} image(s) directly in {split}/ belong to no class folder",
                    "format",
                    WARNING,
                )
            )
    return ParsedDataset(
        name=f"imagefolder:{root.name}",
        format="imagefolder",
        root=root,
        image_root=root,
        classnames=classes,
        splits=splits,
        templates=[options.template or DEFAULT_TEMPLATE],
        problems=problems,
        class_source=root / "train",
        class_locations={label: (str(root / "train" / name), None) for label, name in enumerate(classes)},
    )


def _parse_flat(root: Path, options: ImageFolderOptions) -> ParsedDataset:
    classes = [folder.name for folder in list_subfolders(root)]
    pool = [s for label, name in enumerate(classes) for s in _class_samples(root / name, f"{name}/", label)]
    parts, record = split_pool(pool, options)
    record["rule"] = SEEDED_SPLIT_RULE
    splits = {split: SplitData(samples) for split, samples in parts.items()}
    return ParsedDataset(
        name=f"imagefolder:{root.name}",
        format="imagefolder-flat",
        root=root,
        image_root=root,
        classnames=classes,
        splits=splits,
        templates=[options.template or DEFAULT_TEMPLATE],
        problems=[],
        meta={"seeded_split": record},
        class_source=root,
        class_locations={label: (str(root / name), None) for label, name in enumerate(classes)},
    )
