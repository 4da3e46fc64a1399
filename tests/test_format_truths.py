"""Data-format truths: one fault injected per test, the outcome asserted (one precise problem, right place)."""
from __future__ import annotations

import json

from test_formats_trees import write_image

from vlprompt.data.check import check_dataset


def _compact_coop_tree(root, entries):
    """A CoOp split file rewritten on ONE line (json.dumps without indent): every entry is "at line 1"."""
    folder = root / "oxford_pets"
    for split_entries in entries.values():
        for path, *_ in split_entries:
            write_image(folder / "images" / path)
    (folder / "split_zhou_OxfordPets.json").write_text(json.dumps(entries))
    return folder


def test_one_wrong_coop_label_is_one_error_naming_the_entry_and_the_row(tmp_path):
    names = ["cat", "dog"]
    train = [[f"{names[c]}_{i}.jpg", c, names[c]] for c in range(2) for i in range(12)]
    train[0] = ["cat_0.jpg", 1, "cat"]  # the fault: cat is label 0 everywhere else, and it comes first
    entries = {"train": train, "val": [["cat_v.jpg", 0, "cat"]], "test": [["cat_t.jpg", 0, "cat"],
                                                                          ["dog_t.jpg", 1, "dog"]]}
    _compact_coop_tree(tmp_path, entries)
    report = check_dataset("coop:OxfordPets", str(tmp_path))
    assert len(report.errors) == 1, [p.message for p in report.errors]
    message = report.errors[0].message
    assert "train[0] = ['cat_0.jpg', 1, 'cat']" in message
    assert "label 1 is named 'cat' here but 'dog'" in message and "'cat' is label 0" in message
    # no invented class_0 and no class left empty by swapped names
    assert not [p for p in report.problems if "in train" in p.message or "class_0" in p.message]


def test_csv_without_a_label_column_is_one_error_for_the_header(tmp_path):
    rows = ["path,split"] + [f"img_{i}.jpg,train" for i in range(869)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    report = check_dataset("csv", str(tmp_path / "data.csv"))
    assert len(report.errors) == 1, [p.message for p in report.errors[:3]]
    problem = report.errors[0]
    assert problem.line == 1 and "header" in problem.message and "no label column" in problem.message


def test_csv_rows_with_too_few_columns_are_one_error(tmp_path):
    (tmp_path / "data.csv").write_text("".join(f"img_{i}.jpg\n" for i in range(50)))
    report = check_dataset("csv", str(tmp_path / "data.csv"))
    short = [p for p in report.errors if "expected path,label columns" in p.message]
    assert len(short) == 1 and "49 more rows" in short[0].message and short[0].line == 1


def test_empty_class_in_val_is_reported_at_the_val_folder(tmp_path):
    for name in ("ant", "bee"):
        write_image(tmp_path / "train" / name / "a.jpg")
        write_image(tmp_path / "test" / name / "a.jpg")
    write_image(tmp_path / "val" / "ant" / "a.jpg")  # the fault: val has no bee
    report = check_dataset("imagefolder", str(tmp_path))
    empty = [p for p in report.problems if p.kind == "empty_class"]
    assert len(empty) == 1 and "no images in val" in empty[0].message
    assert empty[0].file == str(tmp_path / "val")
    assert empty[0].severity == "warning"


def test_demo_prints_method_and_epoch_progress_off_a_terminal(tmp_path, capsys):
    from vlprompt.demo import run_demo

    run_demo(tmp_path / "demo", methods=["linear"])
    out = capsys.readouterr().out
    assert "[1/1 methods] linear ..." in out
    epochs = [line for line in out.splitlines() if line.strip().startswith("epoch ") and " done (" in line]
    assert epochs and epochs[0].strip().startswith("epoch 1/")
