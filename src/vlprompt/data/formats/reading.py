"""Reading split files and class-name files: relative image paths, integer labels, UTF-8 lines and JSON with the
line of every member, so that each problem points at its line."""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlprompt.data.formats.parsed import Problem

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:/")


def normalise_relpath(raw: Any) -> tuple[str | None, str | None]:
    """Return (normalised relative path, None) or (None, why it is unusable).

    Absolute paths and paths whose ``..`` climb out of the image root are refused: a split file must describe
    images inside the dataset, so that the dataset can be moved and so that a typo cannot read unrelated files.
    """
    if not isinstance(raw, str) or not raw.strip():
        return None, f"image path {raw!r} is empty or not a string"
    text = raw.strip().replace("\\", "/")
    if text.startswith("/") or _WINDOWS_DRIVE.match(text):
        return None, f"image path '{raw}' is absolute; paths must be relative to the dataset's image folder"
    normal = posixpath.normpath(text)
    if normal == ".." or normal.startswith("../"):
        return None, f"image path '{raw}' climbs out of the dataset's image folder with '..'"
    if normal == ".":
        return None, f"image path '{raw}' names the image folder itself, not an image"
    return normal, None


_INT = re.compile(r"^[+-]?\d+$")


def parse_int(raw: Any) -> int | None:
    """An integer label from JSON or text; None for anything else (floats, words, booleans)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and _INT.match(raw.strip()):
        return int(raw.strip())
    return None


def read_text_lines(path: Path, problems: list[Problem]) -> list[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file as (1-based line number, stripped text)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        problems.append(
            Problem(str(path), None, f"cannot read the file ({error.strerror or error})", "missing")
        )
        return []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        problems.append(Problem(str(path), line, "the file is not UTF-8 text; save it as UTF-8", "format"))
        return []
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


class _LineCounter:
    """Line numbers of increasing character offsets in one text, counted incrementally."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0
        self.line = 1

    def at(self, offset: int) -> int:
        self.line += self.text.count("\n", self.position, offset)
        self.position = offset
        return self.line


@dataclass
class JsonDocument:
    """A parsed JSON file plus the line where each member starts, down to a fixed depth.

    ``lines[("train", 3)]`` is the line of the fourth entry of the top-level "train" list; ``lines[(key,)]`` the
    line of a top-level key. ``duplicates`` lists repeated object keys as (key path, line, first line), which
    ``json.load`` would silently collapse.
    """

    value: Any
    lines: dict[tuple, int]
    duplicates: list[tuple[tuple, int, int]]


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def load_json_document(path: Path, problems: list[Problem], depth: int = 2) -> JsonDocument | None:
    """Parse a JSON split file keeping line numbers; a read or syntax error becomes a Problem and None."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        problems.append(
            Problem(str(path), None, f"cannot read the file ({error.strerror or error})", "missing")
        )
        return None
    except UnicodeDecodeError:
        problems.append(Problem(str(path), None, "the file is not UTF-8 text; save it as UTF-8", "format"))
        return None
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        problems.append(
            Problem(str(path), error.lineno, f"not valid JSON: {error.msg} (column {error.colno})")
        )
        return None
    counter = _LineCounter(text)
    decoder = json.JSONDecoder()
    lines: dict[tuple, int] = {}
    duplicates: list[tuple[tuple, int, int]] = []

    def skip(index: int) -> int:
        return _WHITESPACE.match(text, index).end()

    def walk(index: int, levels: int, prefix: tuple) -> tuple[Any, int]:
        index = skip(index)
        opener = text[index]
        if levels == 0 or opener not in "[{":
            return decoder.raw_decode(text, index)
        container: Any = {} if opener == "{" else []
        index = skip(index + 1)
        closer = "}" if opener == "{" else "]"
        position = 0
        while text[index] != closer:
            line = counter.at(index)
            if opener == "{":
                key, index = json.decoder.scanstring(text, index + 1)
                index = skip(index) + 1  # the ':'
                member = prefix + (key,)
                if member in lines:
                    duplicates.append((member, line, lines[member]))
                else:
                    lines[member] = line
                value, index = walk(index, levels - 1, member)
                container[key] = value
            else:
                # An entry that is itself a list ([path, label, name] over several lines) is located by its first
                # value, the image path, rather than by its opening bracket.
                start = skip(index + 1) if text[index] == "[" else index
                lines[prefix + (position,)] = counter.at(start)
                value, index = walk(index, levels - 1, prefix + (position,))
                container.append(value)
                position += 1
            index = skip(index)
            if text[index] == ",":
                index = skip(index + 1)
        return container, index + 1

    value, _ = walk(0, depth, ())
    return JsonDocument(value, lines, duplicates)


def read_classnames_file(path: Path, problems: list[Problem]) -> tuple[dict[int, tuple[str, int]], bool]:
    """Class names from a text or JSON file -> ({key: (name, line)}, keyed_by_id).

    Text: one name per line (line order gives the class index) or "<id> <name>" on every line (CUB's
    classes.txt). JSON: a list of names or an object {id: name}.
    """
    names: dict[int, tuple[str, int]] = {}
    if path.suffix.lower() == ".json":
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
    lines = read_text_lines(path, problems)
    pairs = [text.split(None, 1) for _, text in lines]
    keyed = bool(pairs) and all(len(pair) == 2 and parse_int(pair[0]) is not None for pair in pairs)
    for index, ((number, text), pair) in enumerate(zip(lines, pairs)):
        key, name = (parse_int(pair[0]), pair[1].strip()) if keyed else (index, text)
        if key in names:
            problems.append(
                Problem(
                    str(path),
                    number,
                    f"class {key} is named twice (first at line {names[key][1]})",
                    "classname",
                )
            )
            continue
        names[key] = (name, number)
    return names, keyed
