"""A user's own segmentation data: an image + mask folder, or a CSV of (image, mask, split) rows.

Folder layout (``segfolder``): ``<root>/images/<split>/*`` and ``<root>/masks/<split>/*.png`` with the same file
stems, ``<split>`` among train, val, test; ``<root>/classes.txt`` names class i on line i + 1 (mask value i).
CSV layout (``segcsv``): ``<root>/<csv>`` (default ``segmentation.csv``) with a header ``image,mask,split`` and
paths relative to ``<root>``, plus ``classes.txt``. Masks are single-channel PNGs of class indices; pixels equal
to ``ignore_index`` (default 255) are ignored; ``reduce_zero_label`` reads 0 as ignore and k as class k - 1
(ADE20K's convention, for masks that reserve 0 for "unlabelled").
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from vlprompt.data.formats.problems import Problem
from vlprompt.data.formats.reading import normalise_relpath, read_text, read_text_lines
from vlprompt.data.formats.segmasks import (
    MASK_SUFFIXES,
    ParsedSegmentation,
    SegPair,
    list_files,
    list_image_files,
    pair_by_stem,
)
from vlprompt.data.formats.splits import ROLES

FOLDER_LAYOUT = "<root>/images/{train,val,test}/*, <root>/masks/{train,val,test}/*.png and <root>/classes.txt"
CSV_LAYOUT = "<root>/segmentation.csv (columns image,mask,split; paths relative to <root>) and <root>/classes.txt"


@dataclass
class SegFolderOptions:
    """Options of the image + mask folder reader."""

    ignore_index: int = field(default=255, metadata={"help": "mask value that marks unlabelled pixels",
                                                     "range": (0, 255)})
    reduce_zero_label: bool = field(default=False, metadata={
        "help": "read 0 as ignore and k as class k-1 (ADE20K's convention)"})
    classes_file: str = field(default="classes.txt", metadata={
        "help": "class names, one per line, relative to the root"})


@dataclass
class SegCsvOptions(SegFolderOptions):
    """Options of the CSV reader."""

    csv: str = field(default="segmentation.csv", metadata={"help": "the CSV file, relative to the root"})


def _classnames(root: Path, options: SegFolderOptions) -> tuple[list[str], list[Problem]]:
    path = root / options.classes_file
    if not path.is_file():
        return [], [Problem(str(path), None, "the class-name file is missing (one class name per line, line i + 1 "
                            "names mask value i)", "missing")]
    problems: list[Problem] = []
    return [name for _, name in read_text_lines(path, problems)], problems


def parse_segfolder(root: Path, options: SegFolderOptions) -> ParsedSegmentation:
    classnames, problems = _classnames(root, options)
    splits = {}
    for split in ROLES:
        images = list_image_files(root / "images" / split)
        masks = list_files(root / "masks" / split, MASK_SUFFIXES)
        if images or masks:
            splits[split], found = pair_by_stem(images, masks, root, split)
            problems += found
    return ParsedSegmentation("segfolder", "segfolder", root, classnames, splits, options.ignore_index,
                              options.reduce_zero_label, problems)


def parse_segcsv(root: Path, options: SegCsvOptions) -> ParsedSegmentation:
    classnames, problems = _classnames(root, options)
    source = root / options.csv
    splits: dict[str, list[SegPair]] = {}
    if not source.is_file():
        problems.append(Problem(str(source), None, "the CSV file is missing (columns image,mask,split)", "missing"))
    else:
        text = read_text(source, problems)
        if text is not None:
            _read_pairs(source, text, splits, problems)
    return ParsedSegmentation("segcsv", "segcsv", root, classnames, splits, options.ignore_index,
                              options.reduce_zero_label, problems, source=source)


def _read_pairs(source: Path, text: str, splits: dict[str, list[SegPair]], problems: list[Problem]) -> None:
    """The CSV's rows as pairs per split. Header names are matched with surrounding spaces dropped (a hand-edited
    ``image, mask, split`` is the same header); a row with fewer cells than the header, a path that is absolute or
    climbs out of the root (the one rule, ``normalise_relpath``) and unreadable CSV are located problems."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader, [])]
        if not {"image", "mask", "split"} <= set(header):
            problems.append(Problem(str(source), 1, f"the header is {header}; it needs image, mask, split", "format"))
            return
        column = {name: header.index(name) for name in ("image", "mask", "split")}
        for row in reader:
            if row:  # a blank line is skipped, as csv.DictReader does
                _add_pair(source, reader.line_num, row, header, column, splits, problems)
    except csv.Error as error:
        problems.append(Problem(str(source), reader.line_num, f"not readable as CSV ({error})", "format"))


def _add_pair(source: Path, line: int, row: list[str], header: list[str], column: dict[str, int],
              splits: dict[str, list[SegPair]], problems: list[Problem]) -> None:
    if len(row) <= max(column.values()):
        problems.append(Problem(str(source), line, f"the row has {len(row)} cells; the header names "
                                f"{len(header)} ({', '.join(header)})", "format"))
        return
    split = row[column["split"]].strip()
    if split not in ROLES:
        problems.append(Problem(str(source), line, f"split {split!r} is not one of {ROLES}", "format"))
        return
    (image, image_why), (mask, mask_why) = (normalise_relpath(row[column[c]]) for c in ("image", "mask"))
    for why in (image_why, mask_why):
        if why is not None:
            problems.append(Problem(str(source), line, why, "path"))
    if image is not None and mask is not None:
        splits.setdefault(split, []).append(SegPair(image, mask, line))
