"""`check_dataset` collects every problem of a broken tree, each with its file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_formats_trees import coop_pets, vtab_task, write_image, write_truncated_jpeg

from vlprompt.core.errors import VlpromptError
from vlprompt.data.check import check_dataset


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    hits = [number for number, text in enumerate(path.read_text().splitlines(), 1) if needle in text]
    return hits[occurrence - 1]


def by_kind(report, kind):
    return [p for p in report.problems if p.kind == kind]


def test_clean_dataset_passes_with_a_summary(tmp_path):
    coop_pets(tmp_path)
    report = check_dataset("coop:OxfordPets", str(tmp_path))
    assert report.ok and report.problems == []
    assert report.summary["classes"] == 2
    assert report.summary["splits"]["train"]["images"] == 6
    assert report.summary["splits"]["test"]["classes_present"] == 2
    assert report.summary["images_decoded"] == 12
    text = report.format()
    assert "classes: 2" in text and "train [train]" in text and "Result: OK" in text


def test_broken_coop_tree_reports_every_problem_with_file_and_line(tmp_path):
    entries = {
        "train": [
            ["cat_0.jpg", 0, "cat"],
            ["cat_1.jpg", 0, "cat"],  # truncated JPEG
            ["cat_2.jpg", 0, "cat"],  # missing file
            ["../escape.jpg", 0, "cat"],  # path outside the root
            ["dog_0.jpg", "dog", "dog"],  # label that is not an integer
            ["dog_1.jpg", 1, "dog"],
            ["dog_1.jpg", 1, "dog"],  # duplicate path
            ["bird_0.jpg", 1, "bird"],  # class-name mismatch: label 1 is 'dog'
            ["fish_0.jpg", 3, "fish"],  # label 3 used, label 2 never: an empty class
        ],
        "val": [["cat_v.jpg", 0, "cat"], ["dog_v.jpg", 1, "dog"]],
        "test": [["cat_t.jpg", 0, "cat"], ["dog_t.jpg", 1, "dog"], ["fish_t.jpg", 3, "fish"]],
    }
    folder = coop_pets(tmp_path, entries)
    images = folder / "images"
    write_truncated_jpeg(images / "cat_1.jpg")
    (images / "cat_2.jpg").unlink()
    split_file = folder / "split_zhou_OxfordPets.json"

    report = check_dataset("coop:OxfordPets", str(tmp_path))
    assert not report.ok
    located = {(p.kind, Path(p.file).name, p.line) for p in report.problems}
    assert ("corrupt", split_file.name, line_of(split_file, '"cat_1.jpg"')) in located
    assert ("missing", split_file.name, line_of(split_file, '"cat_2.jpg"')) in located
    assert ("path", split_file.name, line_of(split_file, "../escape.jpg")) in located
    assert ("label", split_file.name, line_of(split_file, '"dog_0.jpg"')) in located
    assert ("duplicate", split_file.name, line_of(split_file, '"dog_1.jpg"', 2)) in located
    assert ("classname", split_file.name, line_of(split_file, '"bird_0.jpg"')) in located
    empty = by_kind(report, "empty_class")
    assert any("class 2" in p.message and "train" in p.message and p.severity == "error" for p in empty)
    corrupt = by_kind(report, "corrupt")[0]
    assert "cat_1.jpg" in corrupt.message and "truncated" in corrupt.message.lower()
    assert "'dog' at line" in by_kind(report, "classname")[0].message

    text = report.format()
    assert f"split_zhou_OxfordPets.json:{line_of(split_file, '../escape.jpg')}: error:" in text
    assert "Result: FAILED" in text


def test_vtab_out_of_range_and_non_integer_labels(tmp_path):
    folder = vtab_task(tmp_path, task="kitti")
    with open(folder / "train800.txt", "a") as handle:
        handle.write("images/train800_0_0.jpg 4\nimages/train800_0_1.jpg four\n/abs/path.jpg 0\n")
    report = check_dataset("vtab:kitti", str(tmp_path))
    messages = {(Path(p.file).name, p.line): p.message for p in report.errors}
    assert "out of range" in messages[("train800.txt", 5)] and "0..3" in messages[("train800.txt", 5)]
    assert "not an integer" in messages[("train800.txt", 6)]
    assert "absolute" in messages[("train800.txt", 7)]
    # VTAB-1k leaves classes without training images by design: a warning, not an error.
    assert all(p.severity == "warning" for p in by_kind(report, "empty_class"))
    assert report.summary["splits"]["train800val200"]["images"] == 6


def test_test_image_in_training_split_is_an_error(tmp_path):
    folder = vtab_task(tmp_path)
    with open(folder / "train800.txt", "a") as handle:
        handle.write("images/test_0_0.jpg 0\n")
    report = check_dataset("vtab:eurosat", str(tmp_path))
    leaks = [p for p in report.errors if p.kind == "duplicate"]
    assert leaks and "in both train800 and test" in leaks[0].message and leaks[0].line == 5


def test_imagefolder_empty_class_and_corrupt_png(tmp_path):
    for name in ("cat", "dog"):
        write_image(tmp_path / "train" / name / "0.png")
        write_image(tmp_path / "test" / name / "0.png")
    (tmp_path / "train" / "emu").mkdir()
    (tmp_path / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    write_image(tmp_path / "test" / "yak" / "0.png")
    report = check_dataset("imagefolder", str(tmp_path))
    assert report.summary["classes"] == 3
    corrupt = by_kind(report, "corrupt")
    assert len(corrupt) == 1 and corrupt[0].file.endswith("train/dog/1.png") and corrupt[0].line is None
    emu = [p for p in by_kind(report, "empty_class") if "'emu'" in p.message and p.severity == "error"]
    assert emu and emu[0].file.endswith("train/emu")
    assert any("yak" in p.message for p in by_kind(report, "classname"))


def test_csv_problems_name_the_csv_line(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg")
    (tmp_path / "classes.txt").write_text("ant\nbee\n")
    (tmp_path / "train.csv").write_text("a.jpg,ant\nb.jpg,bee\nc.jpg,wasp\n")
    (tmp_path / "test.csv").write_text("path,label\na.jpg,ant\n..\\up.jpg,bee\n")
    report = check_dataset("csv", str(tmp_path), classnames="classes.txt")
    located = {(Path(p.file).name, p.line, p.kind) for p in report.errors}
    assert ("train.csv", 3, "classname") in located  # 'wasp' is not in classes.txt
    assert ("test.csv", 3, "path") in located
    assert ("train.csv", 1, "duplicate") in located  # a.jpg is in train and test


def test_invalid_json_and_missing_root_are_reports_not_crashes(tmp_path):
    folder = tmp_path / "oxford_pets"
    folder.mkdir()
    (folder / "split_zhou_OxfordPets.json").write_text('{"train": [\n  ["a.jpg", 0, "cat"],\n}')
    report = check_dataset("coop:OxfordPets", str(tmp_path))
    assert not report.ok and report.problems[0].line == 3 and "not valid JSON" in report.problems[0].message
    missing = check_dataset("fgvc", str(tmp_path / "nowhere"))
    assert not missing.ok and "does not exist" in missing.problems[0].message


def test_fgvc_duplicate_json_key_is_reported(tmp_path):
    write_image(tmp_path / "images" / "a.jpg")
    write_image(tmp_path / "images" / "b.jpg")
    (tmp_path / "train.json").write_text('{\n"a.jpg": 0,\n"b.jpg": 1,\n"a.jpg": 0\n}')
    (tmp_path / "test.json").write_text(json.dumps({"b.jpg": 1}))
    report = check_dataset("fgvc", str(tmp_path))
    duplicates = [p for p in report.problems if "listed twice" in p.message]
    assert duplicates and duplicates[0].line == 4 and "first at line 2" in duplicates[0].message


def test_missing_split_file_is_one_problem_not_a_crash(tmp_path):
    folder = vtab_task(tmp_path)
    (folder / "train800.txt").unlink()
    report = check_dataset("vtab:eurosat", str(tmp_path))
    missing = [p for p in report.errors if p.kind == "missing"]
    assert (
        len(missing) == 1
        and missing[0].file.endswith("train800.txt")
        and "split=select" in missing[0].message
    )
    assert check_dataset("vtab:eurosat", str(tmp_path), split="final").ok


def test_unknown_dataset_name_lists_close_names(tmp_path):
    with pytest.raises(VlpromptError, match="coop:OxfordPets"):
        check_dataset("coop:OxfordPet", str(tmp_path))


def test_imagenet_empty_class_points_at_its_classnames_line(tmp_path):
    folder = tmp_path / "imagenet"
    folder.mkdir()
    (folder / "classnames.txt").write_text("n01000001 tench\nn02000002 goldfish\n")
    for split in ("train", "val"):
        write_image(folder / "images" / split / "n01000001" / "a.JPEG")
    write_image(folder / "images" / "val" / "n02000002" / "a.JPEG")
    report = check_dataset("coop:ImageNet", str(tmp_path))
    empty = by_kind(report, "empty_class")
    assert len(empty) == 1 and empty[0].file.endswith("classnames.txt") and empty[0].line == 2
    assert "'goldfish'" in empty[0].message and "train" in empty[0].message and not report.ok
