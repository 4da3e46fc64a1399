"""Reading split files: UTF-8 text, its lines, and JSON with the line of every member, so that each problem points
at its line; relative image paths and integer labels as every format accepts them."""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlprompt.data.formats.problems import Problem

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


def read_text(path: Path, problems: list[Problem]) -> str | None:
    """A split or class file as UTF-8 text (a BOM dropped, line ends made '\\n' as text mode would), or None with
    the reason recorded as a Problem: the file cannot be read, or it is not UTF-8 (located at the undecodable
    byte's line). Every reader of a format's files starts here, so the two failures read the same everywhere."""
    try:
        data = path.read_bytes()
    except OSError as error:
        problems.append(
            Problem(str(path), None, f"cannot read the file ({error.strerror or error})", "missing")
        )
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        problems.append(Problem(str(path), line, "the file is not UTF-8 text; save it as UTF-8", "format"))
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text_lines(path: Path, problems: list[Problem]) -> list[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file as (1-based line number, stripped text)."""
    text = read_text(path, problems)
    if text is None:
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
    text = read_text(path, problems)
    if text is None:
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
