"""A user's own images in class folders: ``<root>/{train,val,test}/<class>/*`` or just ``<root>/<class>/*``.

With split folders, classes are train's folders in sorted order (val is optional). Without them, every class is
split reproducibly into train / val / test by ``seed`` (see ``seeded_split``), and the split used is recorded
in the task's meta. Class names are the folder names as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlprompt.core.config import ValidatedConfig, option
from vlprompt.core.errors import ConfigError, DataError
from vlprompt.data.formats.common import (
    DEFAULT_TEMPLATE,
    WARNING,
    ParsedDataset,
    Problem,
    Sample,
    SplitData,
    list_images,
    list_subfolders,
    scan_class_folders,
    seeded_split,
)

SPLITS = ("train", "val", "test")
LAYOUT = "<root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg (val/ optional), or <root>/<class>/*.jpg"


@dataclass
class ImageFolderOptions(ValidatedConfig):
    """Fractions and seed apply only to the flat layout (no split folders)."""

    config_name = "imagefolder"

    val_fraction: float = option(0.1, help="share of a flat layout held out for validation", range=(0.0, 1.0))
    test_fraction: float = option(0.2, help="share of a flat layout held out for testing", range=(0.0, 1.0))
    seed: int = option(0, help="seed of the split of a flat layout")
    template: str | None = option(None, help="the hand-crafted prompt template with {} for the class name")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                "imagefolder: val_fraction + test_fraction must stay below 1 so that training keeps images; "
                f"got {self.val_fraction} + {self.test_fraction}."
            )


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
    for split in SPLITS:
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
    for split in (s for s in SPLITS if (root / s).is_dir()):
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
        roles={split: split for split in SPLITS if split in splits or split == "test"},
        templates=[options.template or DEFAULT_TEMPLATE],
        problems=problems,
        class_source=root / "train",
        class_locations={label: (str(root / "train" / name), None) for label, name in enumerate(classes)},
    )


def _parse_flat(root: Path, options: ImageFolderOptions) -> ParsedDataset:
    classes = [folder.name for folder in list_subfolders(root)]
    pool = [s for label, name in enumerate(classes) for s in _class_samples(root / name, f"{name}/", label)]
    parts = seeded_split(pool, options.val_fraction, options.test_fraction, options.seed)
    meta = {
        "seeded_split": {
            "seed": options.seed,
            "val_fraction": options.val_fraction,
            "test_fraction": options.test_fraction,
            "rule": "per class: sort by path, shuffle with Random(f'{seed}:{label}'), "
            "first round(n*test_fraction) -> test, next round(n*val_fraction) -> val, rest -> train",
        }
    }
    splits = {split: SplitData(samples) for split, samples in parts.items() if samples or split != "val"}
    return ParsedDataset(
        name=f"imagefolder:{root.name}",
        format="imagefolder-flat",
        root=root,
        image_root=root,
        classnames=classes,
        splits=splits,
        roles={split: split for split in splits},
        templates=[options.template or DEFAULT_TEMPLATE],
        problems=[],
        meta=meta,
        class_source=root,
        class_locations={label: (str(root / name), None) for label, name in enumerate(classes)},
    )
