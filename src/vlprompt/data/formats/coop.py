"""The CoOp benchmark layout: one folder per dataset holding ``split_zhou_<Name>.json`` and the images.

A split file is ``{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}`` with paths relative
to the dataset's image folder. ImageNet (classnames.txt + images/{train,val}/<wnid>/) and FGVCAircraft
(variants.txt + images_variant_{train,val,test}.txt) are read from their own files when no split file is there.
ImageNetV2 / -Sketch / -A / -R are test-only domain-shift targets laid out as CoOp asks (ImageNet's classnames.txt
in their folder, one image folder per class). Folder names, image folders, split file names and templates are
data: ``coop_datasets.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from vlprompt.core.errors import DataError, unknown_name
from vlprompt.data.formats.common import (
    DEFAULT_TEMPLATE,
    WARNING,
    ParsedDataset,
    Problem,
    Sample,
    SplitData,
    list_images,
    list_subfolders,
    packaged_table,
    parse_list_file,
    read_text_lines,
    resolve_option_path,
    scan_class_folders,
    unique_lines,
)
from vlprompt.data.formats.coop_split import parse_split_file


@lru_cache(maxsize=1)
def coop_datasets() -> dict[str, dict]:
    """The 11 datasets' folder names, image folders, split files and templates (from coop_datasets.json)."""
    return packaged_table("coop_datasets.json")


OWN_LAYOUT = (
    "<root>/split_zhou_<Name>.json (or <root>/<folder>/split_zhou_<Name>.json) with images under the folder's "
    "images/ (or beside the split file)"
)


@dataclass
class CoopOptions:
    """``dataset`` is fixed by the registered name (coop:<dataset>); plain ``coop`` reads any data in the CoOp
    layout, with the other three options."""

    dataset: str = field(default="", metadata={"help": "one of CoOp's datasets (fixed by the name coop:<Name>)"})
    split_file: str | None = field(default=None, metadata={
        "help": "plain coop: the split file, relative to root (default: the only split_zhou_*.json there)"})
    image_dir: str | None = field(default=None, metadata={
        "help": "plain coop: the folder split paths are relative to, relative to the split file's folder "
                "(default: images/ when it exists, else that folder itself)"})
    template: str | None = field(default=None, metadata={
        "help": "plain coop: the hand-crafted template, with {} for the class name (default 'a photo of a {}.')"})


def expected_layout(dataset: str) -> str:
    spec = coop_datasets()[dataset]
    if "variant_of" in spec:
        named = "<class index>" if spec["class_folders"] == "index" else "<wnid>"
        return (
            f"<root>/{spec['folder']}/classnames.txt (ImageNet's) with images under "
            f"<root>/{spec['folder']}/{spec['image_dir']}/{named}/"
        )
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
    markers = [spec[key] for key in ("split_file", "classnames_file") if key in spec]
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
    if not dataset:
        return _parse_own(root, options)
    given = [name for name in ("split_file", "image_dir", "template") if getattr(options, name) is not None]
    if given:
        raise DataError(
            f"coop:{dataset} reads its own split file, image folder and template (coop_datasets.json), so "
            f"{', '.join(given)} cannot be set; for other data in the CoOp layout use dataset=coop."
        )
    if dataset not in coop_datasets():
        raise unknown_name("CoOp dataset", dataset, coop_datasets())
    spec = coop_datasets()[dataset]
    folder = _dataset_folder(root, dataset)
    if "variant_of" in spec:
        parsed = _parse_imagenet_variant(folder, dataset, spec)
        parsed.meta["coop_dataset"] = dataset
        return parsed
    split_file = folder / spec["split_file"]
    if split_file.is_file():
        parsed = parse_split_file(folder, split_file, dataset, spec)
    elif dataset == "ImageNet" and (folder / spec["classnames_file"]).is_file():
        parsed = _parse_imagenet(folder, spec)
    elif dataset == "FGVCAircraft" and (folder / spec["classnames_file"]).is_file():
        parsed = _parse_aircraft(folder, spec)
    else:
        raise DataError(f"coop:{dataset}: '{split_file}' is missing. Expected {expected_layout(dataset)}.")
    parsed.meta["coop_dataset"] = dataset
    return parsed


def _own_split_file(root: Path, options: CoopOptions) -> Path:
    """The split file of plain ``coop``: the option, else the only split_zhou_*.json in root or one folder down."""
    if options.split_file is not None:
        path = resolve_option_path(options.split_file, root)
        if not path.is_file():
            raise DataError(f"coop: split file '{path}' does not exist. Expected {OWN_LAYOUT}.")
        return path
    found = sorted(root.glob("split_zhou_*.json")) or sorted(root.glob("*/split_zhou_*.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"coop: no split_zhou_*.json in '{root}' or its sub-folders. Expected {OWN_LAYOUT}.")
    listed = ", ".join(str(p.relative_to(root)) for p in found[:5])
    raise DataError(f"coop: '{root}' holds {len(found)} split files ({listed}); name one with "
                    "dataset_options.split_file=... or use coop:<Name> for one of CoOp's datasets.")


def _parse_own(root: Path, options: CoopOptions) -> ParsedDataset:
    """Any dataset in the CoOp layout (a split file + its images), named after its split file."""
    split_file = _own_split_file(root, options)
    folder = split_file.parent
    name = split_file.stem.removeprefix("split_zhou_")
    image_dir = options.image_dir if options.image_dir is not None else (
        "images" if (folder / "images").is_dir() else "")
    spec = {"image_dir": image_dir, "template": options.template or DEFAULT_TEMPLATE}
    parsed = parse_split_file(folder, split_file, name, spec)
    parsed.meta["coop_dataset"] = name
    return parsed


def _read_wnids(names_file: Path, problems: list[Problem]) -> dict[str, tuple[str, int]]:
    """ImageNet's classnames.txt: '<wnid> <class name>' per line -> {wnid: (name, line)} in file order."""

    def entries():  # lazily, so a malformed line and a repeated wnid are reported in file order
        for number, text in read_text_lines(names_file, problems):
            parts = text.split(None, 1)
            if len(parts) != 2:
                problems.append(Problem(str(names_file), number, f"expected '<wnid> <class name>', got {text!r}"))
                continue
            yield number, parts[0], parts[1].strip()

    return unique_lines(entries(), names_file, problems, "wnid {key} is listed twice (first at line {first})")


def _class_folder_samples(
    split_dir: Path, prefix: str, label_of: dict[str, int], names_file: Path, problems: list[Problem]
) -> list[Sample]:
    """Images in one folder per class under ``split_dir``; folder names map to labels through ``label_of``."""
    loose = list_images(split_dir)
    if loose:
        problems.append(
            Problem(
                str(split_dir),
                None,
                f"{len(loose)} image(s) lie directly in {split_dir.name}/; images must sit in one folder per class "
                "(sort ImageNet's official flat val set into wnid folders, as CoOp's instructions say)",
                "format",
            )
        )
    return scan_class_folders(
        split_dir, prefix, label_of, problems,
        f"folder '{{name}}' is not a class of {names_file.name}; its images are ignored", WARNING,
    )


def _parse_imagenet(folder: Path, spec: dict) -> ParsedDataset:
    """classnames.txt + one image folder per wnid under images/train and images/val; labels in sorted wnid
    order, as CoOp assigns them."""
    problems: list[Problem] = []
    names_file = folder / spec["classnames_file"]
    wnids = _read_wnids(names_file, problems)
    order = sorted(wnids)
    label_of = {wnid: label for label, wnid in enumerate(order)}
    image_root = folder / spec["image_dir"] if (folder / spec["image_dir"]).is_dir() else folder
    splits: dict[str, SplitData] = {}
    for split, sub in spec["image_folders"].items():
        split_dir = image_root / sub
        if not split_dir.is_dir():
            problems.append(Problem(str(split_dir), None, f"the {split} image folder is missing", "missing"))
            continue
        splits[split] = SplitData(_class_folder_samples(split_dir, f"{sub}/", label_of, names_file, problems))
    return ParsedDataset(
        name="coop:ImageNet",
        format="coop-imagenet",
        root=folder,
        image_root=image_root,
        classnames=[wnids[wnid][0] for wnid in order],
        splits=splits,
        templates=[spec["template"]],
        problems=problems,
        meta={
            "wnids": order,
            "note": "ImageNet has no val split; CoOp's used the test set, which we never do",
        },
        class_source=names_file,
        class_locations={label: (str(names_file), wnids[wnid][1]) for label, wnid in enumerate(order)},
    )


def _parse_imagenet_variant(folder: Path, dataset: str, spec: dict) -> ParsedDataset:
    """A test-only ImageNet domain-shift target. Class folders named by index (ImageNetV2: label i is line i of
    classnames.txt) or by wnid (Sketch, A, R: labels over the wnid folders present, sorted, so ImageNet-A/R have
    their 200 classes). ``meta["wnids"]`` maps each label to its wnid, for relating it to ImageNet's labels."""
    problems: list[Problem] = []
    names_file = folder / spec["classnames_file"]
    wnids = _read_wnids(names_file, problems)
    image_root = folder / spec["image_dir"]
    if not image_root.is_dir():
        raise DataError(
            f"coop:{dataset}: image folder '{image_root}' is missing. Expected {expected_layout(dataset)}."
        )
    if spec["class_folders"] == "index":
        order = list(wnids)
        label_of = {str(label): label for label in range(len(order))}
    else:
        order = [d.name for d in list_subfolders(image_root) if d.name in wnids]
        label_of = {wnid: label for label, wnid in enumerate(order)}
    samples = _class_folder_samples(image_root, "", label_of, names_file, problems)
    return ParsedDataset(
        name=f"coop:{dataset}",
        format="coop-imagenet-variant",
        root=folder,
        image_root=image_root,
        classnames=[wnids[wnid][0] for wnid in order],
        splits={"test": SplitData(samples)},
        templates=[spec["template"]],
        problems=problems,
        meta={"wnids": order, "variant_of": spec["variant_of"]},
        class_source=names_file,
        class_locations={label: (str(names_file), wnids[wnid][1]) for label, wnid in enumerate(order)},
        test_only=True,
    )


def _parse_aircraft(folder: Path, spec: dict) -> ParsedDataset:
    """variants.txt (one class per line, in label order) + images_variant_<split>.txt lines '<id> <variant>'."""
    problems: list[Problem] = []
    names_file = folder / spec["classnames_file"]
    variants = unique_lines(
        ((number, name, None) for number, name in read_text_lines(names_file, problems)),
        names_file, problems, "variant '{key}' is listed twice (first at line {first})",
    )
    classnames = list(variants)
    label_of = {name: label for label, name in enumerate(classnames)}
    splits: dict[str, SplitData] = {}
    for split, list_name in spec["list_files"].items():
        list_file = folder / list_name
        if not list_file.is_file():
            problems.append(Problem(str(list_file), None, f"the {split} list file is missing", "missing"))
            continue
        splits[split] = parse_list_file(
            list_file, problems, "<image id> <variant>", label_of.get,
            f"variant '{{value}}' is not in {names_file.name}", "classname",
            field_has_spaces=True, suffix=spec["image_suffix"],
        )
    return ParsedDataset(
        name="coop:FGVCAircraft",
        format="coop-aircraft",
        root=folder,
        image_root=folder / spec["image_dir"],
        classnames=classnames,
        splits=splits,
        templates=[spec["template"]],
        problems=problems,
        class_source=names_file,
        class_locations={label: (str(names_file), variants[name][1]) for label, name in enumerate(classnames)},
    )
