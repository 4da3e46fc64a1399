"""Checks that need no image decoding (labels in range, duplicates, split overlap, empty classes, missing files),
shared by loading and ``vlprompt data check``."""

from __future__ import annotations

from collections import Counter

from vlprompt.data.formats.parsed import ERROR, WARNING, ParsedDataset, Problem, Sample


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
    problems: list[Problem] = []
    for split, data in parsed.splits.items():
        first_seen: dict[str, Sample] = {}
        for sample in data.samples:
            if sample.path in first_seen:
                file, line = parsed.locate(split, sample)
                earlier = first_seen[sample.path].line
                where = f" (first at line {earlier})" if earlier is not None else ""
                problems.append(
                    Problem(
                        file, line, f"'{sample.path}' is listed twice in {split}{where}", "duplicate", WARNING
                    )
                )
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
            severity = WARNING if role == "val" else ERROR
            problems.append(
                Problem(where, None, f"the {split} split has no usable images", "empty_class", severity)
            )
    problems += _empty_class_problems(parsed)
    if check_files:
        problems += missing_file_problems(parsed)
    return problems


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


def missing_file_problems(parsed: ParsedDataset) -> list[Problem]:
    """Listed images that are not files. Splits read from a folder listing (no split file) exist by construction."""
    problems: list[Problem] = []
    checked: dict[str, bool] = {}
    for split, data in parsed.splits.items():
        if data.file is None:
            continue
        for sample in data.samples:
            exists = checked.get(sample.path)
            if exists is None:
                exists = checked[sample.path] = (parsed.image_root / sample.path).is_file()
            if not exists:
                file, line = parsed.locate(split, sample)
                problems.append(
                    Problem(
                        file, line, f"image '{sample.path}' is missing under {parsed.image_root}", "missing"
                    )
                )
    return problems
