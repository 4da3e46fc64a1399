"""FGVC JSON (the VPT benchmark layout): ``<root>/{train,val,test}.json``, each ``{relative_image_path: class_id}``.

Class ids may be any integers (NABirds' are sparse); they are mapped to 0..C-1 in sorted order of the ids that
train.json uses, and a val/test id that train never uses is an error. Images are relative to ``images/``
(CUB, NABirds), ``Images/`` (Stanford Dogs) or the root itself (Stanford Cars, Flowers); the first that holds the
listed files is used unless ``image_dir`` says otherwise. Class names come from ``classnames`` (default:
classnames.txt or classes.txt in the root), cleaned of CUB-style "001." prefixes (underscores become spaces in LabelSpace), else class_<id>.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vlprompt.core.errors import DataError
from vlprompt.data.formats.common import (
    DEFAULT_TEMPLATE,
    ROLES,
    WARNING,
    ParsedDataset,
    Problem,
    Sample,
    SplitData,
    absence_severity,
    load_json_document,
    normalise_relpath,
    parse_int,
    placeholder_name,
    read_classnames_file,
    resolve_option_path,
)

IMAGE_DIRS = ("images", "Images", "")
CLASSNAME_FILES = ("classnames.txt", "classes.txt", "classnames.json")
LAYOUT = "<root>/{train,val,test}.json, each {relative_image_path: class_id}, images under <root>/images/ or <root>/"


@dataclass
class FgvcOptions:
    """image_dir: folder (relative to root) the JSON paths are relative to; classnames: a class-name file;
    template: the hand-crafted text template for CLIP methods."""

    image_dir: str | None = None
    classnames: str | None = None
    template: str | None = None


def strip_index_prefix(name: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black_footed_Albatross': CUB's index prefix is not part of the name.
    Underscores become spaces in LabelSpace, as for every format."""
    return re.sub(r"^\d+\.", "", name).strip()


def parse_fgvc(root: Path, options: FgvcOptions) -> ParsedDataset:
    if not any((root / f"{split}.json").is_file() for split in ROLES):
        raise DataError(f"fgvc: '{root}' holds none of train.json, val.json, test.json. Expected {LAYOUT}.")
    problems: list[Problem] = []
    raw: dict[str, list[tuple[str, object, int | None]]] = {}
    files: dict[str, Path] = {}
    for split in ROLES:
        split_file = root / f"{split}.json"
        if not split_file.is_file():
            problems.append(
                Problem(str(split_file), None, f"{split}.json is missing", "missing", absence_severity(split))
            )
            continue
        document = load_json_document(split_file, problems, depth=1)
        if document is None:
            continue
        if not isinstance(document.value, dict):
            problems.append(Problem(str(split_file), 1, "expected an object {relative_image_path: class_id}"))
            continue
        for member, line, first in document.duplicates:
            problems.append(
                Problem(
                    str(split_file),
                    line,
                    f"'{member[0]}' is listed twice (first at line {first}); JSON keeps the last",
                    "duplicate",
                    WARNING,
                )
            )
        files[split] = split_file
        raw[split] = [(key, value, document.lines.get((key,))) for key, value in document.value.items()]
    train_ids = sorted({i for _, v, _ in raw.get("train", []) if (i := parse_int(v)) is not None})
    label_of = {class_id: label for label, class_id in enumerate(train_ids)}
    splits: dict[str, SplitData] = {}
    for split, entries in raw.items():
        samples = []
        for key, value, line in entries:
            path, why = normalise_relpath(key)
            class_id = parse_int(value)
            if why is not None:
                problems.append(Problem(str(files[split]), line, why, "path"))
            if class_id is None:
                problems.append(
                    Problem(
                        str(files[split]), line, f"class id {value!r} of '{key}' is not an integer", "label"
                    )
                )
            elif class_id not in label_of:
                problems.append(
                    Problem(
                        str(files[split]),
                        line,
                        f"class id {class_id} of '{key}' is out of range: train.json uses {len(train_ids)} class ids "
                        f"and not this one",
                        "label",
                    )
                )
                class_id = None
            if path is not None and class_id is not None:
                samples.append(Sample(path, label_of[class_id], line))
        splits[split] = SplitData(samples, files[split])
    image_root = _image_root(root, options.image_dir, splits)
    classnames, class_source = _classnames(root, options.classnames, train_ids, problems)
    return ParsedDataset(
        name=f"fgvc:{root.name}",
        format="fgvc",
        root=root,
        image_root=image_root,
        classnames=classnames,
        splits=splits,
        templates=[options.template or DEFAULT_TEMPLATE],
        problems=problems,
        meta={"class_ids": train_ids},
        class_source=class_source or files.get("train"),
    )


def _image_root(root: Path, image_dir: str | None, splits: dict[str, SplitData]) -> Path:
    """The given image_dir, else the first candidate folder that holds the first few listed images."""
    if image_dir is not None:
        return resolve_option_path(image_dir, root)
    probe = [s.path for data in splits.values() for s in data.samples[:3]][:6]
    for candidate in IMAGE_DIRS:
        folder = root / candidate if candidate else root
        if probe and any((folder / path).is_file() for path in probe):
            return folder
    return next((root / c for c in IMAGE_DIRS if c and (root / c).is_dir()), root)


def _classnames(
    root: Path, option: str | None, train_ids: list[int], problems: list[Problem]
) -> tuple[list[str], Path | None]:
    default = [placeholder_name(class_id) for class_id in train_ids]
    if option is not None:
        source = resolve_option_path(option, root)
    else:
        source = next((root / name for name in CLASSNAME_FILES if (root / name).is_file()), None)
    if source is None:
        return default, None
    names, keyed = read_classnames_file(source, problems)
    if not names:
        return default, source
    out = []
    for label, class_id in enumerate(train_ids):
        entry = names.get(class_id if keyed else label)
        if entry is None:
            problems.append(
                Problem(str(source), None, f"class id {class_id} has no name here", "classname", WARNING)
            )
            out.append(default[label])
        else:
            out.append(strip_index_prefix(entry[0]))
    return out, source
