"""Class names as formats read them: class-list files, keys listed once, and names by label with a placeholder
for a label nothing names.

Every class list (a plain classnames.txt, CUB's "<id> <name>" lines, ImageNet's wnids, FGVC-Aircraft's
variants) reports a repeated key the same way, at the repeat's line and naming the first one.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import TypeVar

from vlprompt.data.formats.problems import Problem
from vlprompt.data.formats.reading import load_json_document, parse_int, read_text_lines

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def placeholder_name(key: int) -> str:
    """The name of a class its dataset does not name (no class file, or a label the file skips)."""
    return f"class_{key}"


def names_by_label(names: dict[int, tuple[str, int]], count: int | None = None) -> list[str]:
    """Names of labels 0..count-1 (default: up to the largest named label) from ``{label: (name, line)}``; a
    label without a name gets its placeholder."""
    if count is None:
        count = max(names) + 1 if names else 0
    return [names[label][0] if label in names else placeholder_name(label) for label in range(count)]


def unique_lines(
    entries: Iterable[tuple[int, K, V]], file: Path, problems: list[Problem], twice: str
) -> dict[K, tuple[V, int]]:
    """``{key: (value, line)}`` from (line, key, value) entries in file order. A key listed again is a
    "classname" problem at that line, ``twice`` formatted with ``{key}`` and ``{first}`` (the first line), and
    the first entry stands."""
    found: dict[K, tuple[V, int]] = {}
    for line, key, value in entries:
        if key in found:
            problems.append(Problem(str(file), line, twice.format(key=key, first=found[key][1]), "classname"))
            continue
        found[key] = (value, line)
    return found


def read_classnames_file(path: Path, problems: list[Problem]) -> tuple[dict[int, tuple[str, int]], bool]:
    """Class names from a text or JSON file -> ({key: (name, line)}, keyed_by_id).

    Text: one name per line (line order gives the class index) or "<id> <name>" on every line (CUB's
    classes.txt). JSON: a list of names or an object {id: name}.
    """
    if path.suffix.lower() == ".json":
        return _read_json_names(path, problems)
    lines = read_text_lines(path, problems)
    pairs = [text.split(None, 1) for _, text in lines]
    keyed = bool(pairs) and all(len(pair) == 2 and parse_int(pair[0]) is not None for pair in pairs)
    if keyed:
        entries = [(number, parse_int(pair[0]), pair[1].strip()) for (number, _), pair in zip(lines, pairs)]
    else:
        entries = [(number, index, text) for index, (number, text) in enumerate(lines)]
    return unique_lines(entries, path, problems, "class {key} is named twice (first at line {first})"), keyed


def _read_json_names(path: Path, problems: list[Problem]) -> tuple[dict[int, tuple[str, int]], bool]:
    """A JSON list of names (index = label) or an object {id: name}."""
    names: dict[int, tuple[str, int]] = {}
    document = load_json_document(path, problems, depth=1)
    if document is None:
        return names, False
    value = document.value
    if isinstance(value, list):
        for index, name in enumerate(value):
            names[index] = (str(name), document.lines.get((index,), 1))
        return names, False
    if isinstance(value, dict):
        for key, name in value.items():
            number = parse_int(key)
            line = document.lines.get((key,), 1)
            if number is None:
                problems.append(Problem(str(path), line, f"class id '{key}' is not an integer", "label"))
            else:
                names[number] = (str(name), line)
        return names, True
    problems.append(Problem(str(path), 1, "expected a list of class names or an object {id: name}"))
    return names, False
