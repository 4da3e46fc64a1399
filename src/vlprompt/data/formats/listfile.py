"""List files: one image per line as ``<image path> <field>``, the field giving its class.

VTAB-1k's ``train800.txt`` lines are ``relative/path.jpg label``; FGVC-Aircraft's ``images_variant_train.txt``
lines are ``<image id> <variant name>``. Both read through :func:`parse_list_file`, so a malformed line, a path
that leaves the image folder and an unknown class are reported the same way, at their line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vlprompt.data.formats.parsed import Sample, SplitData
from vlprompt.data.formats.problems import Problem
from vlprompt.data.formats.reading import normalise_relpath, read_text_lines


def parse_list_file(
    list_file: Path,
    problems: list[Problem],
    expected: str,
    label_of: Callable[[str], int | None],
    unknown: str,
    kind: str = "label",
    field_has_spaces: bool = False,
    suffix: str = "",
) -> SplitData:
    """The samples of one list file, each with its line; what is wrong is recorded in ``problems``.

    A line splits at its last blank (an image path may hold spaces) or, with ``field_has_spaces``, at its first
    (a variant name may). A line without both parts is reported with the ``expected`` shape. The image path is
    the first part plus ``suffix``, normalised; the field's label is ``label_of(field)``, and None records
    ``unknown`` (formatted with ``{value}``, the field) as a ``kind`` problem. Only lines with a usable path and
    label become samples.
    """
    file = str(list_file)
    samples = []
    for number, text in read_text_lines(list_file, problems):
        parts = text.split(None, 1) if field_has_spaces else text.rsplit(None, 1)
        if len(parts) != 2:
            problems.append(Problem(file, number, f"expected '{expected}', got {text!r}"))
            continue
        value = parts[1].strip()
        path, why = normalise_relpath(parts[0] + suffix)
        label = label_of(value)
        if why is not None:
            problems.append(Problem(file, number, why, "path"))
        if label is None:
            problems.append(Problem(file, number, unknown.format(value=value), kind))
        if path is not None and label is not None:
            samples.append(Sample(path, label, number))
    return SplitData(samples, list_file)
