"""A CoOp split file (``split_zhou_<Name>.json``): ``{"train": [[relpath, label, classname], ...], ...}``.

Every entry is checked and located by line and by entry index (``train[17]``): released split files put one
value per line, but a rewritten one may sit on a single line, where only the index finds the row.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from vlprompt.data.formats.common import (
    ROLES,
    ParsedDataset,
    Problem,
    Sample,
    SplitData,
    absence_severity,
    load_json_document,
    names_by_label,
    normalise_relpath,
    parse_int,
)


def parse_split_file(folder: Path, split_file: Path, dataset: str, spec: dict) -> ParsedDataset:
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
    entries_by_split: dict[str, list] = {}
    for split in ROLES:
        if value is None:
            break
        entries = value.get(split)
        if not isinstance(entries, list):
            what = "is missing" if entries is None else "is not a list"
            problems.append(
                Problem(str(split_file), 1, f'the "{split}" list {what}', "format", absence_severity(split))
            )
            continue
        entries_by_split[split] = entries
    names = _ClassNames(entries_by_split, document.lines if document is not None else {})
    for split, entries in entries_by_split.items():
        samples = []
        for index, entry in enumerate(entries):
            line = document.lines.get((split, index))
            sample = _read_entry(entry, f"{split}[{index}]", line, split_file, problems, names)
            if sample is not None:
                samples.append(sample)
        splits[split] = SplitData(samples, split_file)
    located = names.located()
    return ParsedDataset(
        name=f"coop:{dataset}",
        format="coop",
        root=folder,
        image_root=image_root,
        classnames=names_by_label(located),  # a label no entry uses is an empty class, named class_<i>
        splits=splits,
        templates=[spec["template"]],
        problems=problems,
        class_source=split_file,
        class_locations={label: (str(split_file), line) for label, (_, line) in located.items()},
    )


class _ClassNames:
    """The label <-> class-name pairing of a split file, decided by the majority of its entries.

    One mislabelled row must not decide the pairing because it comes first: every label takes the name most of
    its entries give it (and every name the label most of its entries give it), so only the rows that disagree
    with the majority are reported, by entry index (``train[17]``), whatever line the JSON puts them on.
    """

    def __init__(self, entries_by_split: dict[str, list], lines: dict[tuple, int]) -> None:
        self.pairs: Counter = Counter()
        self.first: dict[tuple[int, str], str] = {}
        for split, entries in entries_by_split.items():
            for index, entry in enumerate(entries):
                if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], str) and entry[2].strip():
                    label = parse_int(entry[1])
                    if label is not None and label >= 0:
                        self.pairs[(label, entry[2])] += 1
                        self.first.setdefault((label, entry[2]), f"line {lines.get((split, index))}, {split}[{index}]")
        self.name_of: dict[int, str] = {}
        self.label_of: dict[str, int] = {}
        for (label, name), _ in self.pairs.most_common():  # most common first; ties keep file order
            self.name_of.setdefault(label, name)
            self.label_of.setdefault(name, label)
        self.first_line: dict[int, int] = {}

    def disagreement(self, label: int, name: str) -> str | None:
        """Why (label, name) contradicts the majority, or None when it agrees."""
        usual_name, usual_label = self.name_of[label], self.label_of[name]
        if usual_name == name and usual_label == label:
            return None
        if usual_name != name:
            pair = (label, usual_name)
            also = f"; '{name}' is label {usual_label}" if usual_label != label else ""
            return (f"label {label} is named '{name}' here but '{usual_name}' at {self.first[pair]} and in "
                    f"{self.pairs[pair] - 1} more entries{also}")
        pair = (usual_label, name)
        return (f"class name '{name}' has label {label} here but {usual_label} at {self.first[pair]} and in "
                f"{self.pairs[pair] - 1} more entries")

    def seen(self, label: int, line: int | None) -> None:
        self.first_line.setdefault(label, line or 0)

    def located(self) -> dict[int, tuple[str, int]]:
        """{label: (name, first line)} for the labels some agreeing entry uses."""
        return {label: (self.name_of[label], line) for label, line in sorted(self.first_line.items())}


def _read_entry(
    entry: object,
    where: str,
    line: int | None,
    split_file: Path,
    problems: list[Problem],
    names: _ClassNames,
) -> Sample | None:
    """One [relpath, label, classname] entry; records every problem it has and returns None if unusable."""
    file = str(split_file)
    if not (isinstance(entry, list) and len(entry) == 3):
        problems.append(Problem(file, line, f"expected [relative_path, label, classname], got {entry!r} ({where})"))
        return None
    raw_path, raw_label, classname = entry
    path, why = normalise_relpath(raw_path)
    if why is not None:
        problems.append(Problem(file, line, f"{why} ({where})", "path"))
    label = parse_int(raw_label)
    if label is None:
        problems.append(
            Problem(file, line, f"label {raw_label!r} of '{raw_path}' is not an integer ({where})", "label")
        )
    elif label < 0:
        problems.append(Problem(file, line, f"label {label} of '{raw_path}' is negative ({where})", "label"))
        label = None
    if not isinstance(classname, str) or not classname.strip():
        problems.append(
            Problem(file, line, f"class name {classname!r} is empty or not a string ({where})", "classname")
        )
        return None
    if label is not None:
        why_not = names.disagreement(label, classname)
        if why_not is not None:
            problems.append(Problem(file, line, f"{why_not}; fix the row {where} = {entry!r}", "classname"))
            return None
        names.seen(label, line)
    if path is None or label is None:
        return None
    return Sample(path, label, line)

