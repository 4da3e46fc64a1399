"""What every on-disk format shares, in one import: the parsed form and its problems (parsed.py), reading split and
class-name files (reading.py), the checks that need no decoding (checks.py), images and class folders (images.py),
and building the TaskData (build.py).

A format module only parses its split files into a ParsedDataset and records what it finds wrong as Problems
instead of stopping at the first one. The same parse serves loading for training (which refuses a dataset with
errors before any training starts) and ``vlprompt data check`` (which lists every problem).
"""

from __future__ import annotations

from vlprompt.data.formats.build import (
    build_task,
    packaged_table,
    refuse_errors,
    resolve_option_path,
    seeded_split,
    split_checksum,
)
from vlprompt.data.formats.checks import file_problems, labels_in_range, structural_problems
from vlprompt.data.formats.images import ImageLoader, list_images, list_subfolders, scan_class_folders
from vlprompt.data.formats.parsed import (
    DEFAULT_TEMPLATE,
    ERROR,
    IMAGE_SUFFIXES,
    ROLES,
    WARNING,
    ParsedDataset,
    Problem,
    Sample,
    SplitData,
    display_path,
)
from vlprompt.data.formats.reading import (
    JsonDocument,
    load_json_document,
    normalise_relpath,
    parse_int,
    read_classnames_file,
    read_text_lines,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "ERROR",
    "IMAGE_SUFFIXES",
    "ROLES",
    "WARNING",
    "ImageLoader",
    "JsonDocument",
    "ParsedDataset",
    "Problem",
    "Sample",
    "SplitData",
    "build_task",
    "display_path",
    "file_problems",
    "labels_in_range",
    "list_images",
    "list_subfolders",
    "load_json_document",
    "normalise_relpath",
    "packaged_table",
    "parse_int",
    "read_classnames_file",
    "read_text_lines",
    "refuse_errors",
    "resolve_option_path",
    "scan_class_folders",
    "seeded_split",
    "split_checksum",
    "structural_problems",
]
