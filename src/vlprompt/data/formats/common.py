"""What every on-disk format shares: parsed samples with their file and line, problems, and building a TaskData.

A format module only parses its split files into a :class:`ParsedDataset` and records what it finds wrong as
:class:`Problem` objects instead of stopping at the first one. The same parse serves two callers: loading for
training (which refuses a dataset with errors before any training starts) and ``vlprompt data check`` (which
lists every problem). Checks that need no image decoding (duplicates, empty classes, missing files, overlap
between splits) live here so both callers run them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from vlprompt.data.base import ImageDataset, LabelSpace, TaskData
from vlprompt.errors import DataError

logger = logging.getLogger(__name__)

ERROR = "error"
WARNING = "warning"
ROLES = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset on disk, located by file and (for split files) 1-based line."""

    file: str
    line: int | None
    message: str
    kind: str = "format"
    severity: str = ERROR

    def location(self, root: str | Path | None = None) -> str:
        shown = display_path(self.file, root)
        return f"{shown}:{self.line}" if self.line is not None else shown

    def format(self, root: str | Path | None = None) -> str:
        return f"{self.location(root)}: {self.severity}: {self.message}"

    def __str__(self) -> str:
        return self.format()


@dataclass(slots=True)
class Sample:
    """One labelled image: ``path`` is normalised, relative to the image root and '/'-separated."""

    path: str
    label: int
    line: int | None = None


@dataclass
class SplitData:
    """The samples of one split. ``file`` is the split file they came from (None for a folder listing)."""

    samples: list[Sample]
    file: Path | None = None


@dataclass
class ParsedDataset:
    """A dataset as read from disk, before it becomes a TaskData.

    ``splits`` holds every split the format defines (VTAB has four files); ``roles`` says which of them serve as
    train / val / test for this load. ``empty_class_severity`` is "warning" where the protocol itself leaves classes
    without training images (VTAB-1k's 800 images over up to 397 classes). ``test_only`` datasets (domain-shift
    targets) have no train split: their TaskData gets an empty train set and ``meta["test_only"] = True``.
    ``class_locations`` says where each class is defined (a class-list line, a class folder), so that an empty
    class can be reported there.
    """

    name: str
    format: str
    root: Path
    image_root: Path
    classnames: list[str]
    splits: dict[str, SplitData]
    roles: dict[str, str]
    templates: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])
    problems: list[Problem] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    empty_class_severity: str = ERROR
    class_source: Path | None = None
    class_locations: dict[int, tuple[str, int | None]] = field(default_factory=dict)
    test_only: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split_file(self, split: str) -> Path | None:
        data = self.splits.get(split)
        return data.file if data is not None else None

    def locate(self, split: str, sample: Sample) -> tuple[str, int | None]:
        """Where to point a user for ``sample``: its split-file line, else the image file itself."""
        data = self.splits[split]
        if data.file is not None:
            return str(data.file), sample.line
        return str(self.image_root / sample.path), None

    def disjoint_pairs(self) -> list[tuple[str, str]]:
        """Pairs of splits that must share no image: every pair of roles (a test image in training is leakage)."""
        used = [self.roles[role] for role in ROLES if self.roles.get(role) in self.splits]
        pairs = [(a, b) for i, a in enumerate(used) for b in used[i + 1 :] if a != b]
        test = self.roles.get("test")
        for split in self.splits:
            if test in self.splits and split not in used:
                pairs.append((split, test))
        return pairs


class ImageLoader:
    """Opens images under one root as RGB; a plain object (not a closure) so DataLoader workers can pickle it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, source: str) -> Path:
        return self.root / source

    def __call__(self, source: str) -> Image.Image:
        path = self.root / source
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise DataError(
                f"Image file '{path}' is missing. Restore it, or remove it from its split file; "
                "'vlprompt data check NAME ROOT' lists every missing or corrupt image at once."
            ) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(
                f"Image file '{path}' cannot be decoded ({error}). Replace the file or remove it from its split "
                "file; 'vlprompt data check NAME ROOT' lists every corrupt image at once."
            ) from None

    def __repr__(self) -> str:
        return f"ImageLoader({str(self.root)!r})"


# ----------------------------------------------------------------------------------------------------------------
# Reading split files


def display_path(path: str | Path, root: str | Path | None = None) -> str:
    """``path`` relative to ``root`` when it lies under it (shorter messages), else as given."""
    if root is None:
        return str(path)
    try:
        relative = Path(path).relative_to(Path(root))
    except ValueError:
        return str(path)
    return str(path) if relative == Path(".") else str(relative)


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


# ----------------------------------------------------------------------------------------------------------------
# Checks shared by loading and `vlprompt data check`


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


# ----------------------------------------------------------------------------------------------------------------
# Building the TaskData


def split_checksum(sources: Sequence[str], labels: Sequence[int]) -> str:
    """SHA-256 over (relative path, label) in split order: a few-shot index file records it to detect a changed split."""
    digest = hashlib.sha256()
    for source, label in zip(sources, labels):
        digest.update(f"{source}\t{int(label)}\n".encode())
    return digest.hexdigest()


def refuse_errors(
    parsed: ParsedDataset, problems: Iterable[Problem], check_command: str | None = None, limit: int = 5
) -> None:
    """Raise one DataError naming the first few errors; log warnings. Called before any training starts."""
    problems = list(problems)
    errors = [p for p in problems if p.severity == ERROR]
    warnings = [p for p in problems if p.severity != ERROR]
    if warnings:
        logger.warning(
            "Dataset %s: %d warning(s), e.g. %s", parsed.name, len(warnings), warnings[0].format(parsed.root)
        )
    if not errors:
        return
    listed = "\n".join(f"  {p.location(parsed.root)}: {p.message}" for p in errors[:limit])
    more = f"\n  ... and {len(errors) - limit} more" if len(errors) > limit else ""
    raise DataError(
        f"Dataset {parsed.name} at '{parsed.root}' has {len(errors)} error(s) that must be fixed before training; "
        f"'{check_command or f'vlprompt data check {parsed.name} {parsed.root}'}' lists them all:\n{listed}{more}"
    )


def build_task(parsed: ParsedDataset, check_files: bool = True, check_command: str | None = None) -> TaskData:
    """Turn a parsed dataset into a TaskData, refusing it (DataError) when it has errors.

    ``check_command`` is the `vlprompt data check ...` line the error message suggests for the full list.
    """
    missing_roles = [
        Problem(str(parsed.root), None, f"no {role} split was found ({parsed.roles[role]})", "missing")
        for role in (("test",) if parsed.test_only else ("train", "test"))
        if role not in parsed.roles or parsed.roles[role] not in parsed.splits
    ]
    already_refused = any(p.severity == ERROR for p in parsed.problems)
    problems = parsed.problems + ([] if already_refused else missing_roles)
    if not missing_roles:
        problems = problems + structural_problems(parsed, check_files=check_files)
    if not parsed.classnames:
        problems.append(Problem(str(parsed.root), None, "no labelled images were found", "empty_class"))
    refuse_errors(parsed, problems, check_command)
    loader = ImageLoader(parsed.image_root)
    datasets: dict[str, ImageDataset] = {}
    for role, split in parsed.roles.items():
        samples = parsed.splits[split].samples
        if not samples:
            continue  # only val can be empty here (an empty train or test split is refused above)
        datasets[role] = ImageDataset(
            [s.path for s in samples], [s.label for s in samples], loader, name=f"{parsed.name}/{split}"
        )
    meta = {
        "format": parsed.format,
        "root": str(parsed.root),
        "image_root": str(parsed.image_root),
        "splits": {role: parsed.roles[role] for role in datasets},
        "split_files": {role: str(parsed.split_file(parsed.roles[role])) for role in datasets},
        "checksums": {role: split_checksum(d.sources, d.labels) for role, d in datasets.items()},
        **parsed.meta,
    }
    labels = LabelSpace(list(parsed.classnames), list(parsed.templates))
    if labels.classnames != list(parsed.classnames):
        meta["raw_classnames"] = list(parsed.classnames)
    if parsed.test_only:
        datasets["train"] = ImageDataset([], [], loader, name=f"{parsed.name}/train")
        meta["test_only"] = True
    return TaskData(
        name=parsed.name,
        labels=labels,
        train=datasets["train"],
        test=datasets["test"],
        val=datasets.get("val"),
        meta=meta,
    )


def seeded_split(
    samples: Sequence[Sample], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """Split one pool per class into train/val/test, reproducibly from ``seed``.

    Each class is sorted by path, shuffled with its own RNG seeded by (seed, label), and cut into
    round(n*test_fraction) test and round(n*val_fraction) val images; at least one image always stays in train.
    """
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        pool = sorted(by_class[label], key=lambda s: s.path)
        random.Random(f"{seed}:{label}").shuffle(pool)
        n = len(pool)
        n_test = min(round(n * test_fraction), n - 1)
        n_val = min(round(n * val_fraction), n - 1 - n_test)
        out["test"] += pool[:n_test]
        out["val"] += pool[n_test : n_test + n_val]
        out["train"] += pool[n_test + n_val :]
    for samples_of_split in out.values():
        samples_of_split.sort(key=lambda s: (s.label, s.path))
    return out


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix), sorted; hidden files skipped. scandir's entry types
    avoid one stat per file, which matters for ImageNet's 1.28M images."""
    with os.scandir(folder) as entries:
        names = [
            entry.name
            for entry in entries
            if not entry.name.startswith(".")
            and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
            and entry.is_file()
        ]
    return [folder / name for name in sorted(names)]


def list_subfolders(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        names = [entry.name for entry in entries if not entry.name.startswith(".") and entry.is_dir()]
    return [folder / name for name in sorted(names)]


def resolve_option_path(value: str, base: Path) -> Path:
    """A path given in an option: absolute as is, else relative to the dataset folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def packaged_table(filename: str) -> dict[str, dict]:
    """A JSON table shipped in this package (dataset specs), without its ``_comment``-style keys."""
    text = resources.files("vlprompt.data.formats").joinpath(filename).read_text(encoding="utf-8")
    return {name: spec for name, spec in json.loads(text).items() if not name.startswith("_")}


def scan_class_folders(
    split_dir: Path,
    prefix: str,
    label_of: dict[str, int],
    problems: list[Problem],
    unknown: str,
    severity: str = ERROR,
) -> list[Sample]:
    """Samples from ``split_dir/<class>/<image>`` for the classes in ``label_of``; a folder that names no known
    class is reported (``unknown`` formatted with ``{name}``) and its images are skipped."""
    samples: list[Sample] = []
    for class_dir in list_subfolders(split_dir):
        label = label_of.get(class_dir.name)
        if label is None:
            problems.append(Problem(str(class_dir), None, unknown.format(name=class_dir.name), "classname", severity))
            continue
        samples += [Sample(f"{prefix}{class_dir.name}/{p.name}", label) for p in list_images(class_dir)]
    return samples
