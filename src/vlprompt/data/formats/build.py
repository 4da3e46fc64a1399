"""From a parsed dataset to a TaskData: its root, refusing one with errors (and the check command that lists them),
split checksums, and the small helpers formats share (option paths, packaged JSON tables)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from vlprompt.core.errors import DataError
from vlprompt.data.base import ImageDataset, LabelSpace, TaskData
from vlprompt.data.formats.checks import structural_problems
from vlprompt.data.formats.images import ImageLoader
from vlprompt.data.formats.parsed import ParsedDataset
from vlprompt.data.formats.problems import ERROR, Problem
from vlprompt.data.formats.splits import required_roles

logger = logging.getLogger(__name__)

def dataset_root(name: str, root: str | Path | None, layout: str, folder_only: bool = False) -> Path:
    """The resolved root of dataset ``name``, or a DataError naming the layout it expects. A CSV dataset's root
    may be the CSV itself; ``folder_only`` formats need a folder."""
    if root is None or str(root) == "":
        raise DataError(f"Dataset '{name}' is read from disk: give its root folder. Expected {layout}.")
    path = Path(root).expanduser().resolve()
    if not (path.is_dir() if folder_only else path.exists()):
        raise DataError(f"Dataset root '{path}' does not exist. Dataset '{name}' expects {layout}.")
    return path


def check_command(name: str, root: str | Path | None, options: Mapping[str, Any]) -> str:
    """The `vlprompt data check` line a refusal suggests, with the options the dataset was loaded with."""
    extra = "".join(f" {key}={value}" for key, value in options.items())
    return f"vlprompt data check {name} {root}{extra}"


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
        Problem(str(parsed.class_source or parsed.root), None,
                f"no {role} split was found" + (f" ({parsed.roles[role]})" if role in parsed.roles else ""),
                "missing")
        for role in required_roles(parsed.test_only)
        if role not in parsed.roles or parsed.roles[role] not in parsed.splits
    ]
    already_refused = any(p.severity == ERROR for p in parsed.problems)
    problems = parsed.problems + ([] if already_refused else missing_roles)
    if not missing_roles:
        problems = problems + structural_problems(parsed, check_files=check_files)
    if not parsed.classnames and not already_refused:
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


def resolve_option_path(value: str, base: Path) -> Path:
    """A path given in an option: absolute as is, else relative to the dataset folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def packaged_table(filename: str) -> dict[str, dict]:
    """A JSON table shipped in this package (dataset specs), without its ``_comment``-style keys."""
    text = resources.files("vlprompt.data.formats").joinpath(filename).read_text(encoding="utf-8")
    return {name: spec for name, spec in json.loads(text).items() if not name.startswith("_")}
