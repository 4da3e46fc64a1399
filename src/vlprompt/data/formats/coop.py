"""The CoOp benchmark layout: one folder per dataset holding ``split_zhou_<Name>.json`` and the images.

A split file is ``{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}`` with paths relative
to the dataset's image folder. ImageNet (classnames.txt + images/{train,val}/<wnid>/) and FGVCAircraft
(variants.txt + images_variant_{train,val,test}.txt) are read from their own files when no split file is there.
Folder names, image folders, split file names and templates are data: ``coop_datasets.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from vlprompt.data.formats.common import (
    ERROR,
    WARNING,
    ParsedDataset,
    Problem,
    Sample,
    SplitData,
    list_images,
    list_subfolders,
    load_json_document,
    normalise_relpath,
    parse_int,
    read_text_lines,
)
from vlprompt.errors import DataError

SPLITS = ("train", "val", "test")


@lru_cache(maxsize=1)
def coop_datasets() -> dict[str, dict]:
    """The 11 datasets' folder names, image folders, split files and templates (from coop_datasets.json)."""
    text = resources.files("vlprompt.data.formats").joinpath("coop_datasets.json").read_text(encoding="utf-8")
    return {name: spec for name, spec in json.loads(text).items() if not name.startswith("_")}


@dataclass
class CoopOptions:
    """``dataset`` is fixed by the registered name (coop:<dataset>)."""

    dataset: str = ""


def expected_layout(dataset: str) -> str:
    spec = coop_datasets()[dataset]
    images = spec["image_dir"] or "<image folders>"
    layout = (
        f"<root>/{spec['folder']}/{spec['split_file']} with images under <root>/{spec['folder']}/{images}/"
    )
    if dataset == "ImageNet":
        layout += " (or <root>/imagenet/classnames.txt with images/train/<wnid>/ and images/val/<wnid>/)"
    if dataset == "FGVCAircraft":
        layout += (
            " (or <root>/fgvc_aircraft/variants.txt, images_variant_{train,val,test}.txt and images/<id>.jpg)"
        )
    return layout


def _dataset_folder(root: Path, dataset: str) -> Path:
    """``<root>/<folder>`` as CoOp expects, or ``root`` itself when it already is the dataset folder."""
    spec = coop_datasets()[dataset]
    markers = [spec["split_file"], spec.get("classnames_file", spec["split_file"])]
    candidate = root / spec["folder"]
    if candidate.is_dir():
        return candidate
    if any((root / marker).is_file() for marker in markers):
        return root
    raise DataError(
        f"coop:{dataset}: neither '{candidate}' nor '{root}' holds {' or '.join(sorted(set(markers)))}. "
        f"Expected {expected_layout(dataset)}."
    )


def parse_coop(root: Path, options: CoopOptions) -> ParsedDataset:
    dataset = options.dataset
    spec = coop_datasets()[dataset]
    folder = _dataset_folder(root, dataset)
    split_file = folder / spec["split_file"]
    if split_file.is_file():
        parsed = _parse_split_file(folder, split_file, dataset, spec)
    elif dataset == "ImageNet" and (folder / spec["classnames_file"]).is_file():
        parsed = _parse_imagenet(folder, spec)
    elif dataset == "FGVCAircraft" and (folder / spec["classnames_file"]).is_file():
        parsed = _parse_aircraft(folder, spec)
    else:
        raise DataError(f"coop:{dataset}: '{split_file}' is missing. Expected {expected_layout(dataset)}.")
    parsed.meta["coop_dataset"] = dataset
    return parsed


def _parse_split_file(folder: Path, split_file: Path, dataset: str, spec: dict) -> ParsedDataset:
    problems: list[Problem] = []
    image_root = folder / spec["image_dir"] if spec["image_dir"] else folder
    document = load_json_document(split_file, problems, depth=2)
    value = document.value if document is not None else None
    if document is not None and not isinstance(value, dict):
        problems.append(
            Problem(str(split_file), 1, 'expected an object {"train": [...], "val": [...], "test": [...]}')
        )
        value = None
    splits: dict[str, SplitData] = {}
    names_by_label: dict[int, tuple[str, int]] = {}
    labels_by_name: dict[str, tuple[int, int]] = {}
    for split in SPLITS:
        if value is None:
            break
        entries = value.get(split)
        if not isinstance(entries, list):
            what = "is missing" if entries is None else "is not a list"
            severity = WARNING if split == "val" else ERROR
            problems.append(Problem(str(split_file), 1, f'the "{split}" list {what}', "format", severity))
            continue
        samples = []
        for index, entry in enumerate(entries):
            line = document.lines.get((split, index))
            sample = _read_entry(entry, line, split_file, problems, names_by_label, labels_by_name)
            if sample is not None:
                samples.append(sample)
        splits[split] = SplitData(samples, split_file)
    classnames = _classnames_from_labels(names_by_label)
    return ParsedDataset(
        name=f"coop:{dataset}",
        format="coop",
        root=folder,
        image_root=image_root,
        classnames=classnames,
        splits=splits,
        roles={split: split for split in SPLITS if split in splits},
        templates=[spec["template"]],
        problems=problems,
        class_source=split_file,
    )


def _read_entry(
    entry: object,
    line: int | None,
    split_file: Path,
    problems: list[Problem],
    names_by_label: dict[int, tuple[str, int]],
    labels_by_name: dict[str, tuple[int, int]],
) -> Sample | None:
    """One [relpath, label, classname] entry; records every problem it has and returns None if unusable."""
    file = str(split_file)
    if not (isinstance(entry, list) and len(entry) == 3):
        problems.append(Problem(file, line, f"expected [relative_path, label, classname], got {entry!r}"))
        return None
    raw_path, raw_label, classname = entry
    path, why = normalise_relpath(raw_path)
    if why is not None:
        problems.append(Problem(file, line, why, "path"))
    label = parse_int(raw_label)
    if label is None:
        problems.append(
            Problem(file, line, f"label {raw_label!r} of '{raw_path}' is not an integer", "label")
        )
    elif label < 0:
        problems.append(Problem(file, line, f"label {label} of '{raw_path}' is negative", "label"))
        label = None
    if not isinstance(classname, str) or not classname.strip():
        problems.append(
            Problem(file, line, f"class name {classname!r} is empty or not a string", "classname")
        )
        return None
    if label is not None:
        known = names_by_label.get(label)
        if known is None:
            names_by_label[label] = (classname, line or 0)
        elif known[0] != classname:
            problems.append(
                Problem(
                    file,
                    line,
                    f"label {label} is named '{classname}' here but '{known[0]}' at line {known[1]}",
                    "classname",
                )
            )
            return None
        other = labels_by_name.get(classname)
        if other is None:
            labels_by_name[classname] = (label, line or 0)
        elif other[0] != label:
            problems.append(
                Problem(
                    file,
                    line,
                    f"class name '{classname}' has label {label} here but {other[0]} at line {other[1]}",
                    "classname",
                )
            )
            return None
    if path is None or label is None:
        return None
    return Sample(path, label, line)


def _classnames_from_labels(names_by_label: dict[int, tuple[str, int]]) -> list[str]:
    """Labels 0..max; a label no entry uses is an empty class (reported by the shared checks) named class_<i>."""
    if not names_by_label:
        return []
    return [names_by_label.get(label, (f"class_{label}", 0))[0] for label in range(max(names_by_label) + 1)]


def _parse_imagenet(folder: Path, spec: dict) -> ParsedDataset:
    """classnames.txt ("<wnid> <name>" per line) + one image folder per wnid under images/train and images/val."""
    problems: list[Problem] = []
    names_file = folder / spec["classnames_file"]
    wnids: dict[str, tuple[str, int]] = {}
    for number, text in read_text_lines(names_file, problems):
        parts = text.split(None, 1)
        if len(parts) != 2:
            problems.append(Problem(str(names_file), number, f"expected '<wnid> <class name>', got {text!r}"))
            continue
        wnid, name = parts
        if wnid in wnids:
            problems.append(
                Problem(
                    str(names_file),
                    number,
                    f"wnid {wnid} is listed twice (first at line {wnids[wnid][1]})",
                    "classname",
                )
            )
            continue
        wnids[wnid] = (name.strip(), number)
    order = sorted(wnids)
    label_of = {wnid: label for label, wnid in enumerate(order)}
    image_root = folder / spec["image_dir"] if (folder / spec["image_dir"]).is_dir() else folder
    splits: dict[str, SplitData] = {}
    for split, sub in spec["image_folders"].items():
        split_dir = image_root / sub
        if not split_dir.is_dir():
            problems.append(Problem(str(split_dir), None, f"the {split} image folder is missing", "missing"))
            continue
        loose = list_images(split_dir)
        if loose:
            problems.append(
                Problem(
                    str(split_dir),
                    None,
                    f"{len(loose)} image(s) lie directly in {sub}/; ImageNet images must sit in one folder per "
                    "wnid (sort the official flat val set into wnid folders, as CoOp's instructions say)",
                    "format",
                )
            )
        samples = []
        for class_dir in list_subfolders(split_dir):
            label = label_of.get(class_dir.name)
            if label is None:
                problems.append(
                    Problem(
                        str(class_dir),
                        None,
                        f"folder '{class_dir.name}' is not listed in {names_file.name}; "
                        "its images are ignored",
                        "classname",
                        WARNING,
                    )
                )
                continue
            samples += [Sample(f"{sub}/{class_dir.name}/{p.name}", label) for p in list_images(class_dir)]
        splits[split] = SplitData(samples)
    return ParsedDataset(
        name="coop:ImageNet",
        format="coop-imagenet",
        root=folder,
        image_root=image_root,
        classnames=[wnids[wnid][0] for wnid in order],
        splits=splits,
        roles={split: split for split in spec["image_folders"]},
        templates=[spec["template"]],
        problems=problems,
        meta={
            "wnids": order,
            "note": "ImageNet has no val split; CoOp's used the test set, which we never do",
        },
        class_source=names_file,
    )


def _parse_aircraft(folder: Path, spec: dict) -> ParsedDataset:
    """variants.txt (one class per line, in label order) + images_variant_<split>.txt lines '<id> <variant>'."""
    problems: list[Problem] = []
    names_file = folder / spec["classnames_file"]
    classnames: list[str] = []
    label_of: dict[str, tuple[int, int]] = {}
    for number, name in read_text_lines(names_file, problems):
        if name in label_of:
            problems.append(
                Problem(
                    str(names_file),
                    number,
                    f"variant '{name}' is listed twice (first at line {label_of[name][1]})",
                    "classname",
                )
            )
            continue
        label_of[name] = (len(classnames), number)
        classnames.append(name)
    splits: dict[str, SplitData] = {}
    for split, list_name in spec["list_files"].items():
        list_file = folder / list_name
        if not list_file.is_file():
            problems.append(Problem(str(list_file), None, f"the {split} list file is missing", "missing"))
            continue
        samples = []
        for number, text in read_text_lines(list_file, problems):
            parts = text.split(None, 1)
            if len(parts) != 2:
                problems.append(
                    Problem(str(list_file), number, f"expected '<image id> <variant>', got {text!r}")
                )
                continue
            image_id, variant = parts[0], parts[1].strip()
            path, why = normalise_relpath(image_id + spec["image_suffix"])
            known = label_of.get(variant)
            if known is None:
                problems.append(
                    Problem(
                        str(list_file),
                        number,
                        f"variant '{variant}' is not in {names_file.name}",
                        "classname",
                    )
                )
            if why is not None:
                problems.append(Problem(str(list_file), number, why, "path"))
            if known is not None and path is not None:
                samples.append(Sample(path, known[0], number))
        splits[split] = SplitData(samples, list_file)
    return ParsedDataset(
        name="coop:FGVCAircraft",
        format="coop-aircraft",
        root=folder,
        image_root=folder / spec["image_dir"],
        classnames=classnames,
        splits=splits,
        roles={split: split for split in spec["list_files"] if split in splits},
        templates=[spec["template"]],
        problems=problems,
        class_source=names_file,
    )
