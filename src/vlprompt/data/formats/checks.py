"""Checks that need no image decoding (labels in range, duplicates, split overlap, empty classes, missing files),
shared by loading and ``vlprompt data check``."""

from __future__ import annotations

from collections import Counter

from vlprompt.data.base import display_name
from vlprompt.data.formats.containment import ImageFolderBounds
from vlprompt.data.formats.parsed import ParsedDataset, Sample
from vlprompt.data.formats.problems import ERROR, WARNING, Problem, display_path
from vlprompt.data.formats.splits import absence_severity


def labels_in_range(parsed: ParsedDataset) -> None:
    """Drop samples whose label is outside 0..C-1, recording each as a problem at its line."""
    count = parsed.num_classes
    for split, data in parsed.splits.items():
        kept = []
        for sample in data.samples:
            if 0 <= sample.label < count:
                kept.append(sample)
                continue
            file, line = parsed.locate(split, sample)
            parsed.problems.append(
                Problem(
                    file,
                    line,
                    f"label {sample.label} of '{sample.path}' is out of range: this dataset has {count} classes, "
                    f"so labels must lie in 0..{count - 1}",
                    "label",
                )
            )
        data.samples = kept


def structural_problems(parsed: ParsedDataset, check_files: bool = True) -> list[Problem]:
    """Problems visible without decoding images: duplicates, split overlap, empty classes, missing files."""
    problems: list[Problem] = _colliding_class_names(parsed)
    for split, data in parsed.splits.items():
        first_seen: dict[str, Sample] = {}
        for sample in data.samples:
            if sample.path in first_seen:
                problems.append(_listed_twice(parsed, split, first_seen[sample.path], sample))
            else:
                first_seen[sample.path] = sample
    for left, right in parsed.disjoint_pairs():
        right_paths = {sample.path for sample in parsed.splits[right].samples}
        for sample in parsed.splits[left].samples:
            if sample.path in right_paths:
                file, line = parsed.locate(left, sample)
                problems.append(
                    Problem(file, line, f"'{sample.path}' is in both {left} and {right}", "duplicate")
                )
                right_paths.discard(sample.path)
    unreadable = {p.file for p in parsed.problems if p.severity == ERROR and p.kind == "format"}
    for role, split in parsed.roles.items():
        data = parsed.splits.get(split)
        if data is not None and not data.samples and str(data.file) not in unreadable:  # else already said why
            where = str(data.file) if data.file is not None else str(parsed.root)
            problems.append(Problem(
                where, None, f"the {split} split has no usable images", "empty_class", absence_severity(role)
            ))
    problems += _empty_class_problems(parsed)
    if check_files:
        problems += file_problems(parsed)
    return problems


def _listed_twice(parsed: ParsedDataset, split: str, first: Sample, again: Sample) -> Problem:
    """A repeated image: a warning when both rows agree (it only weighs twice), an error when they give it two
    labels (one of them is wrong, and training on both teaches the model nothing about that image)."""
    file, line = parsed.locate(split, again)
    where = f" (first at line {first.line})" if first.line is not None else ""
    if first.label == again.label:
        return Problem(file, line, f"'{again.path}' is listed twice in {split}{where}", "duplicate", WARNING)

    def named(label: int) -> str:
        return f"'{parsed.classnames[label]}' (label {label})" if 0 <= label < parsed.num_classes else str(label)

    first_at = f"line {first.line}" if first.line is not None else "its first row"
    return Problem(
        file, line,
        f"'{again.path}' is listed twice in {split} with two labels: {named(first.label)} at {first_at} and "
        f"{named(again.label)} here; keep the row with the right label and delete the other",
        "duplicate",
    )


def _colliding_class_names(parsed: ParsedDataset) -> list[Problem]:
    """Class names that differ on disk but read the same once '_' becomes ' ' ('dark_red' and 'dark red'): CLIP
    methods would build identical prompts for both classes, so one of them could never be predicted."""
    by_display: dict[str, list[int]] = {}
    for label, name in enumerate(parsed.classnames):
        by_display.setdefault(display_name(name).strip(), []).append(label)
    problems = []
    for display, labels in by_display.items():
        if len(labels) < 2:
            continue
        fallback = (str(parsed.class_source or parsed.root), None)
        where, line = parsed.class_locations.get(labels[1], fallback)
        listed = " and ".join(
            f"'{parsed.classnames[label]}' (label {label}{_at(parsed, label)})" for label in labels
        )
        problems.append(Problem(
            where, line,
            f"classes {listed} both read as '{display}' once underscores become spaces, so their text prompts "
            "would be identical; rename or merge one of them",
            "classname",
        ))
    return problems


def _at(parsed: ParsedDataset, label: int) -> str:
    where, line = parsed.class_locations.get(label, (None, None))
    if where is None:
        return ""
    return f", {display_path(where, parsed.root)}" + (f" line {line}" if line is not None else "")


def _empty_class_problems(parsed: ParsedDataset) -> list[Problem]:
    """One problem per split naming its classes without images (VTAB's small splits would give hundreds)."""
    problems: list[Problem] = []
    train = parsed.roles.get("train")
    file = str(parsed.class_source) if parsed.class_source is not None else str(parsed.root)
    for split, data in parsed.splits.items():
        if not data.samples:
            continue
        counts = Counter(sample.label for sample in data.samples)
        empty = [label for label in range(parsed.num_classes) if counts[label] == 0]
        if not empty:
            continue
        severity = parsed.empty_class_severity if split == train else WARNING
        split_file = str(data.file) if data.file is not None else file
        if split != train and data.file is None and (parsed.root / split).is_dir():
            split_file = str(parsed.root / split)  # a folder layout: the split's own folder, not train's class
        named = [f"{label} ('{parsed.classnames[label]}')" for label in empty]
        if len(named) == 1:
            # The class's definition (a class-list line, train's class folder) locates it for the training split;
            # another split is pointed at its own file or folder.
            fallback = (split_file, None)
            where, line = parsed.class_locations.get(empty[0], fallback) if split == train else fallback
            message = f"class {named[0]} has no images in {split}"
            problems.append(Problem(where, line, message, "empty_class", severity))
            continue
        more = f" and {len(named) - 10} more" if len(named) > 10 else ""
        message = f"{len(named)} classes have no images in {split}: {', '.join(named[:10])}{more}"
        problems.append(Problem(split_file, None, message, "empty_class", severity))
    return problems


def file_problems(parsed: ParsedDataset) -> list[Problem]:
    """Listed images that are not files, and images whose links lead out of the image folder (containment.py).
    Splits read from a folder listing exist by construction, so only their links are checked."""
    problems: list[Problem] = []
    bounds = ImageFolderBounds(parsed.image_root)
    checked: dict[str, tuple[str, str] | None] = {}
    for split, data in parsed.splits.items():
        for sample in data.samples:
            if sample.path not in checked:
                checked[sample.path] = _file_problem(parsed, bounds, sample.path, listed=data.file is not None)
            found = checked[sample.path]
            if found is not None:
                file, line = parsed.locate(split, sample)
                problems.append(Problem(file, line, *found))
    return problems


def _file_problem(
    parsed: ParsedDataset, bounds: ImageFolderBounds, relative: str, listed: bool
) -> tuple[str, str] | None:
    """(message, kind) of what is wrong with one image file, or None."""
    real = bounds.escape(relative)
    if real is not None:
        return bounds.message(relative, real), "path"
    if listed and not (parsed.image_root / relative).is_file():
        return f"image '{relative}' is missing under {parsed.image_root}", "missing"
    return None
