"""What every on-disk format shares, in one import: problems (problems.py), the split-role rules (splits.py),
the parsed form (parsed.py), reading split files (reading.py), list files (listfile.py), class names
(classnames.py), the checks that need no decoding (checks.py), images and class folders (images.py), and building
the TaskData (build.py).

A format module only parses its split files into a ParsedDataset and records what it finds wrong as Problems
instead of stopping at the first one. The same parse serves loading for training (which refuses a dataset with
errors before any training starts) and ``vlprompt data check`` (which lists every problem).
"""

from __future__ import annotations

from vlprompt.data.base import DEFAULT_TEMPLATE
from vlprompt.data.formats.build import (
    build_task,
    check_command,
    dataset_root,
    packaged_table,
    refuse_errors,
    resolve_option_path,
    split_checksum,
)
from vlprompt.data.formats.checks import file_problems, labels_in_range, structural_problems
from vlprompt.data.formats.classnames import (
    names_by_label,
    placeholder_name,
    read_classnames_file,
    unique_lines,
)
from vlprompt.data.formats.images import ImageLoader, list_images, list_subfolders, scan_class_folders
from vlprompt.data.formats.listfile import parse_list_file
from vlprompt.data.formats.parsed import IMAGE_SUFFIXES, ParsedDataset, Sample, SplitData
from vlprompt.data.formats.problems import ERROR, WARNING, Problem, display_path
from vlprompt.data.formats.reading import (
    JsonDocument,
    load_json_document,
    normalise_relpath,
    parse_int,
    read_text,
    read_text_lines,
)
from vlprompt.data.formats.seeded import SEEDED_SPLIT_RULE, SeededSplitOptions, seeded_split, split_pool
from vlprompt.data.formats.splits import ROLES, absence_severity, required_roles, roles_of

__all__ = [
    "DEFAULT_TEMPLATE",
    "ERROR",
    "IMAGE_SUFFIXES",
    "ROLES",
    "SEEDED_SPLIT_RULE",
    "WARNING",
    "ImageLoader",
    "JsonDocument",
    "ParsedDataset",
    "Problem",
    "Sample",
    "SeededSplitOptions",
    "SplitData",
    "absence_severity",
    "build_task",
    "check_command",
    "dataset_root",
    "display_path",
    "file_problems",
    "labels_in_range",
    "list_images",
    "list_subfolders",
    "load_json_document",
    "names_by_label",
    "normalise_relpath",
    "packaged_table",
    "parse_int",
    "parse_list_file",
    "placeholder_name",
    "read_classnames_file",
    "read_text",
    "read_text_lines",
    "refuse_errors",
    "required_roles",
    "resolve_option_path",
    "roles_of",
    "scan_class_folders",
    "seeded_split",
    "split_checksum",
    "split_pool",
    "structural_problems",
    "unique_lines",
]
