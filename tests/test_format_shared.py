"""The pieces every on-disk format shares (data/formats/): split roles, reading text, list files, class lists,
dataset roots, the seeded split. Each is written once, so its exact behaviour is pinned here rather than per format."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlprompt.core.errors import ConfigError, DataError
from vlprompt.data.formats.common import (
    ERROR,
    ROLES,
    WARNING,
    ParsedDataset,
    Problem,
    Sample,
    SplitData,
    absence_severity,
    check_command,
    dataset_root,
    names_by_label,
    parse_int,
    parse_list_file,
    read_classnames_file,
    read_text,
    read_text_lines,
    required_roles,
    roles_of,
    split_pool,
    unique_lines,
)
from vlprompt.data.formats.csvfile import CsvOptions
from vlprompt.data.formats.imagefolder import ImageFolderOptions


def test_split_roles_required_optional_and_severity():
    assert ROLES == ("train", "val", "test")
    assert required_roles() == ("train", "test")
    assert required_roles(test_only=True) == ("test",)
    assert [absence_severity(role) for role in ROLES] == [ERROR, WARNING, ERROR]


def test_roles_of_keeps_found_roles_and_every_required_one():
    assert roles_of({"train": 1, "val": 2, "test": 3}) == {"train": "train", "val": "val", "test": "test"}
    assert list(roles_of({"test": 1, "train": 2})) == ["train", "test"]  # role order, not the splits' order
    # A required role that is absent is still named, so loading can say which one is missing; val is not.
    assert roles_of({}) == {"train": "train", "test": "test"}
    assert roles_of({"val": 1}) == {"train": "train", "val": "val", "test": "test"}
    assert roles_of({"test": 1}, test_only=True) == {"test": "test"}
    assert roles_of({"train": 1, "other": 2}) == {"train": "train", "test": "test"}


def _parsed(splits: dict, **extra) -> ParsedDataset:
    return ParsedDataset(name="t", format="t", root=Path("/r"), image_root=Path("/r"), classnames=["a"],
                         splits=splits, **extra)


def test_parsed_dataset_derives_roles_unless_given():
    found = {"train": SplitData([]), "test": SplitData([])}
    assert _parsed(found).roles == {"train": "train", "test": "test"}
    assert _parsed({"test": SplitData([])}, test_only=True).roles == {"test": "test"}
    mapped = {"train800": SplitData([]), "test": SplitData([])}
    assert _parsed(mapped, roles={"train": "train800", "test": "test"}).roles == {"train": "train800", "test": "test"}


def test_read_text_drops_bom_and_normalises_line_ends(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo\rthree\n\n  four  \n")
    problems: list[Problem] = []
    assert read_text(path, problems) == "one\ntwo\nthree\n\n  four  \n"
    assert read_text_lines(path, problems) == [(1, "one"), (2, "two"), (3, "three"), (5, "four")]
    assert problems == []


def test_read_text_names_the_file_and_the_line_it_cannot_read(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"ok\nok\ncaf\xe9\n")
    problems: list[Problem] = []
    assert read_text(latin, problems) is None
    assert read_text(tmp_path / "absent.txt", problems) is None
    assert problems == [
        Problem(str(latin), 3, "the file is not UTF-8 text; save it as UTF-8", "format"),
        Problem(str(tmp_path / "absent.txt"), None, "cannot read the file (No such file or directory)", "missing"),
    ]


def test_list_file_reports_each_bad_line_by_file_and_line(tmp_path):
    list_file = tmp_path / "train800.txt"
    list_file.write_text("images/a b.jpg 0\n\njustone\nimages/c.jpg x\n/abs.jpg 1\n../up.jpg y\nimages/d.jpg 2\n")
    problems: list[Problem] = []
    split = parse_list_file(list_file, problems, "relative/path.jpg label", parse_int,
                            "label {value!r} is not an integer")
    assert split.file == list_file
    assert split.samples == [Sample("images/a b.jpg", 0, 1), Sample("images/d.jpg", 2, 7)]
    file = str(list_file)
    assert problems == [
        Problem(file, 3, "expected 'relative/path.jpg label', got 'justone'"),
        Problem(file, 4, "label 'x' is not an integer", "label"),
        Problem(file, 5, "image path '/abs.jpg' is absolute; paths must be relative to the dataset's image folder",
                "path"),
        Problem(file, 6, "image path '../up.jpg' climbs out of the dataset's image folder with '..'", "path"),
        Problem(file, 6, "label 'y' is not an integer", "label"),
    ]


def test_list_file_with_names_that_hold_spaces_and_an_id_suffix(tmp_path):
    list_file = tmp_path / "images_variant_train.txt"
    list_file.write_text("0001 BAe 146-200\n0002 A300\n0003 Unknown jet\n")
    label_of = {"A300": 0, "BAe 146-200": 1}
    problems: list[Problem] = []
    split = parse_list_file(list_file, problems, "<image id> <variant>", label_of.get,
                            "variant '{value}' is not in variants.txt", "classname",
                            field_has_spaces=True, suffix=".jpg")
    assert split.samples == [Sample("0001.jpg", 1, 1), Sample("0002.jpg", 0, 2)]
    assert problems == [Problem(str(list_file), 3, "variant 'Unknown jet' is not in variants.txt", "classname")]


def test_unique_lines_keeps_the_first_and_names_it_at_the_repeat(tmp_path):
    file = tmp_path / "wnids.txt"
    problems: list[Problem] = []
    found = unique_lines([(1, "n1", "cat"), (2, "n2", "dog"), (4, "n1", "kitten")], file, problems,
                         "wnid {key} is listed twice (first at line {first})")
    assert found == {"n1": ("cat", 1), "n2": ("dog", 2)}
    assert problems == [Problem(str(file), 4, "wnid n1 is listed twice (first at line 1)", "classname")]


def test_class_files_plain_keyed_and_json(tmp_path):
    plain, keyed, listed = tmp_path / "plain.txt", tmp_path / "classes.txt", tmp_path / "names.json"
    plain.write_text("cat\ndog\ncat\n")
    keyed.write_text("5 001.Albatross\n9 002.Blackbird\n5 003.Again\n")
    listed.write_text('[\n "x",\n "y"\n]')
    problems: list[Problem] = []
    assert read_classnames_file(plain, problems) == ({0: ("cat", 1), 1: ("dog", 2), 2: ("cat", 3)}, False)
    assert read_classnames_file(keyed, problems) == ({5: ("001.Albatross", 1), 9: ("002.Blackbird", 2)}, True)
    assert read_classnames_file(listed, problems) == ({0: ("x", 2), 1: ("y", 3)}, False)
    assert problems == [Problem(str(keyed), 3, "class 5 is named twice (first at line 1)", "classname")]


def test_names_by_label_fills_unnamed_labels_with_placeholders():
    names = {0: ("cat", 1), 2: ("dog", 3)}
    assert names_by_label(names) == ["cat", "class_1", "dog"]
    assert names_by_label(names, 4) == ["cat", "class_1", "dog", "class_3"]
    assert names_by_label(names, 1) == ["cat"]
    assert names_by_label({}) == []
    assert names_by_label({}, 2) == ["class_0", "class_1"]


def test_dataset_root_and_check_command(tmp_path):
    (tmp_path / "a.csv").write_text("x.jpg,0\n")
    assert dataset_root("csv", str(tmp_path / "a.csv"), "LAYOUT") == (tmp_path / "a.csv").resolve()
    with pytest.raises(DataError, match=r"^Dataset 'csv' is read from disk: give its root folder\. Expected L\.$"):
        dataset_root("csv", "", "L")
    missing = (tmp_path / "nope").resolve()
    with pytest.raises(DataError) as refused:
        dataset_root("segfolder", str(tmp_path / "a.csv"), "L", folder_only=True)
    not_a_folder = (tmp_path / "a.csv").resolve()
    assert str(refused.value) == f"Dataset root '{not_a_folder}' does not exist. Dataset 'segfolder' expects L."
    with pytest.raises(DataError, match="does not exist"):
        dataset_root("csv", str(missing), "L")
    assert check_command("vtab:dtd", "/data/vtab", {"split": "final", "seed": 3}) == (
        "vlprompt data check vtab:dtd /data/vtab split=final seed=3")


def test_split_pool_is_reproducible_drops_an_empty_val_and_records_the_draw():
    pool = [Sample(f"{c}/{i}.jpg", label) for label, c in enumerate("ab") for i in range(4)]
    options = ImageFolderOptions(val_fraction=0.25, test_fraction=0.25, seed=1)
    splits, record = split_pool(pool, options)
    assert {role: [s.path for s in samples] for role, samples in splits.items()} == {
        "train": ["a/1.jpg", "a/3.jpg", "b/1.jpg", "b/3.jpg"],
        "val": ["a/2.jpg", "b/0.jpg"],
        "test": ["a/0.jpg", "b/2.jpg"],
    }
    assert record == {"seed": 1, "val_fraction": 0.25, "test_fraction": 0.25}
    # Two images of one class: round(0.5) == 0 of each held out; the empty val is left out, test stays (required).
    splits, _ = split_pool(pool[:2], options)
    assert {role: [s.path for s in samples] for role, samples in splits.items()} == {
        "train": ["a/0.jpg", "a/1.jpg"], "test": []}


@pytest.mark.parametrize("options", [CsvOptions, ImageFolderOptions])
def test_seeded_split_fractions_must_leave_training_images(options):
    with pytest.raises(ConfigError) as refused:
        options(val_fraction=0.5, test_fraction=0.5)
    assert str(refused.value) == (
        f"{options.config_name}: val_fraction + test_fraction must stay below 1 so that training keeps images; "
        "got 0.5 + 0.5.")
