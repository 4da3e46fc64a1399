"""The fault suite for bad input (issue 19 item 6): each case is one clear paragraph naming the file or field and
what to do, never a traceback or a silent wrong result. The README's fault table points at these tests and at the
older ones elsewhere (run folders, artifacts, formats, data check)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_formats_trees import coop_pets, write_image

import vlprompt
from vlprompt.backbones.registry import create_backbone
from vlprompt.cli import main
from vlprompt.core.errors import ConfigError, DataError, VlpromptError
from vlprompt.data.base import LabelSpace
from vlprompt.data.check import check_dataset
from vlprompt.data.registry import load_dataset
from vlprompt.methods import create_method

TINY_TRAIN = ["method=linear", "backbone=tiny:timm_vit", "shots=1", "train.epochs=1"]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def prompt_folder(tmp_path_factory) -> Path:
    """A zero-shot prompt folder on the tiny open_clip (no training: predict only needs a folder)."""
    folder = tmp_path_factory.mktemp("prompt") / "zs"
    labels = LabelSpace(["red", "green", "blue"])
    vlprompt.save_pretrained(create_method("zeroshot", create_backbone("tiny:open_clip"), labels), folder)
    return folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    for i in range(3):
        write_image(tmp_path / "imgs" / f"{i}.png", (40 * i, 200, 30), size=16)
    return tmp_path / "imgs"


# ----- a malformed split_zhou_*.json in train: the data-check errors, not a KeyError -----
@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: {k: v for k, v in d.items() if k != "train"}, 'the "train" list is missing'),
    (lambda d: {"train": d["train"], "val": d["val"]}, 'the "test" list is missing'),
    (lambda d: [d["train"]], 'expected an object {"train": [...], "val": [...], "test": [...]}'),
    (lambda d: {**d, "train": {"a.jpg": 0}}, 'the "train" list is not a list'),
])
def test_malformed_coop_split_file_in_train_names_the_file(tmp_path, capsys, change, expected):
    folder = coop_pets(tmp_path)
    split_file = folder / "split_zhou_OxfordPets.json"
    split_file.write_text(json.dumps(change(json.loads(split_file.read_text()))))
    code, _, err = run_cli(["train", *TINY_TRAIN, "dataset=coop:OxfordPets", f"root={tmp_path}",
                            f"out={tmp_path / 'run'}"], capsys)
    assert code == 2 and "Traceback" not in err and "KeyError" not in err
    assert f"split_zhou_OxfordPets.json:1: {expected}" in err
    assert f"vlprompt data check coop:OxfordPets {tmp_path}" in err  # where the full list is
    assert not (tmp_path / "run" / "results.json").exists()


def test_split_file_that_is_not_json_in_train(tmp_path, capsys):
    folder = coop_pets(tmp_path)
    (folder / "split_zhou_OxfordPets.json").write_text("")
    code, _, err = run_cli(["train", *TINY_TRAIN, "dataset=coop:OxfordPets", f"root={tmp_path}",
                            f"out={tmp_path / 'run'}"], capsys)
    assert code == 2 and "split_zhou_OxfordPets.json:1: not valid JSON" in err
    assert "has 1 error(s)" in err  # the consequence ("no labelled images") is not counted as a second error


# ----- a decompression bomb in predict -----
def test_decompression_bomb_in_predict_is_refused_by_name(prompt_folder, image_folder, capsys, monkeypatch):
    # PIL refuses images over 2 x MAX_IMAGE_PIXELS before decoding; a lower limit makes a 16 px image one.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    code, out, err = run_cli(["predict", str(prompt_folder), str(image_folder / "0.png")], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"Image '{image_folder / '0.png'}' was refused as a possible decompression bomb" in err
    assert "downscale it" in err and "MAX_IMAGE_PIXELS" in err


# ----- predict | head: a closed pipe ends quietly -----
def test_predict_into_a_closed_pipe_exits_quietly(prompt_folder, image_folder, monkeypatch, capsys):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is printed, as with `| head -0`
    with open(write_end, "w") as closed_pipe:
        monkeypatch.setattr(sys, "stdout", closed_pipe)
        code = main(["predict", str(prompt_folder), str(image_folder)])
        monkeypatch.undo()
    assert code == 141  # 128 + SIGPIPE, what a shell shows for `vlprompt predict ... | head`
    assert capsys.readouterr().err == ""  # no BrokenPipeError traceback, no message


# ----- class names equal after '_' -> ' ' -----
def test_class_folders_equal_after_cleaning_are_refused_naming_both(tmp_path):
    for name in ("dark_red", "dark red", "blue"):
        for split in ("train", "test"):
            write_image(tmp_path / split / name / "0.png")
    with pytest.raises(DataError) as error:
        load_dataset("imagefolder", str(tmp_path))
    message = str(error.value)
    assert "classes 'dark red' (label 1, train/dark red) and 'dark_red' (label 2, train/dark_red) both read as " \
           "'dark red'" in message and "rename or merge one of them" in message
    report = check_dataset("imagefolder", str(tmp_path))
    assert [p.kind for p in report.errors] == ["classname"]


def test_label_space_refuses_names_equal_after_cleaning():
    with pytest.raises(ConfigError, match=r"'dark_red' \(class 0\) and 'dark red' \(class 2\) both read as "
                                          r"'dark red'"):
        LabelSpace(["dark_red", "blue", "dark red"])


# ----- one image under two labels -----
def test_csv_listing_an_image_under_two_labels_names_both_labels_and_lines(tmp_path):
    for i in range(4):
        write_image(tmp_path / "img" / f"{i}.png")
    rows = ["path,label", "img/0.png,cat", "img/1.png,cat", "img/2.png,dog", "img/3.png,dog", "img/0.png,dog"]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as error:
        load_dataset("csv", str(tmp_path))
    assert ("data.csv:6: image 'img/0.png' is listed under two labels: 'cat' (line 2) and 'dog' (line 6); keep "
            "the row with the right label and delete the other") in str(error.value)


def test_split_file_listing_an_image_under_two_labels_is_an_error_and_same_label_a_warning(tmp_path):
    names = ["abyssinian", "beagle"]
    entries = {split: [[f"{names[c]}_{split}_{i}.jpg", c, names[c]] for c in range(2) for i in range(2)]
               for split in ("train", "val", "test")}
    entries["train"].append(["abyssinian_train_0.jpg", 1, "beagle"])
    entries["val"].append(["abyssinian_val_0.jpg", 0, "abyssinian"])
    lines = (coop_pets(tmp_path, entries) / "split_zhou_OxfordPets.json").read_text().splitlines()
    train_at, again_at = [i for i, text in enumerate(lines, 1) if '"abyssinian_train_0.jpg"' in text]
    val_at = next(i for i, text in enumerate(lines, 1) if '"abyssinian_val_0.jpg"' in text)
    report = check_dataset("coop:OxfordPets", str(tmp_path))
    assert [(p.line, p.message) for p in report.errors] == [(again_at,
        (f"'abyssinian_train_0.jpg' is listed twice in train with two labels: 'abyssinian' (label 0) at line "
         f"{train_at} and 'beagle' (label 1) here; keep the row with the right label and delete the other"))]
    assert [p.message for p in report.warnings] == [
        f"'abyssinian_val_0.jpg' is listed twice in val (first at line {val_at})"]


# ----- an empty YAML config -----
@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_yaml_config_is_refused(tmp_path, capsys, text):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    code, _, err = run_cli(["train", str(config), f"out={tmp_path / 'run'}"], capsys)
    assert code == 2 and f"Config file '{config}' is empty (or holds only comments)" in err
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(["sweep", str(config), "--out", str(tmp_path / "sweep")], capsys)
    assert code == 2 and f"Sweep config '{config}' is empty" in err


def test_yaml_that_does_not_parse_names_the_file_and_the_place(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("method: linear\ntrain: {lr: 0.1\n")
    code, _, err = run_cli(["train", str(config)], capsys)
    assert code == 2 and f"Config file '{config}' is not valid YAML" in err and "line 3" in err


# ----- symlinks out of the image folder are refused like '..' -----
def _linked_tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    for name in ("cat", "dog"):
        for split in ("train", "test"):
            write_image(root / split / name / "0.png")
    outside = write_image(tmp_path / "elsewhere" / "secret.png")
    return root, outside


def test_a_symlink_out_of_the_image_folder_is_refused(tmp_path):
    root, outside = _linked_tree(tmp_path)
    (root / "train" / "cat" / "1.png").symlink_to(outside)
    with pytest.raises(DataError) as error:
        load_dataset("imagefolder", str(root))
    assert (f"image 'train/cat/1.png' resolves to '{outside}', outside the image folder '{root}'"
            in str(error.value))
    # check_files=false skips the up-front check; the loader still refuses the file when it is read.
    task = load_dataset("imagefolder", str(root), check_files=False)
    with pytest.raises(DataError, match="resolves to .*secret.png', outside the image folder"):
        task.train.load("train/cat/1.png")


def test_links_inside_the_folder_and_a_linked_image_folder_are_read(tmp_path):
    root, _ = _linked_tree(tmp_path)
    (root / "train" / "cat" / "1.png").symlink_to(root / "train" / "cat" / "0.png")
    assert len(load_dataset("imagefolder", str(root)).train) == 3
    folder = coop_pets(tmp_path / "real")
    (tmp_path / "linked" / "oxford_pets").mkdir(parents=True)
    for item in folder.iterdir():  # the dataset folder's entries, including images/, are links to elsewhere
        (tmp_path / "linked" / "oxford_pets" / item.name).symlink_to(item)
    assert len(load_dataset("coop:OxfordPets", str(tmp_path / "linked")).train) == 6


def test_a_split_file_path_through_a_linked_folder_out_is_refused(tmp_path):
    folder = coop_pets(tmp_path)
    outside = write_image(tmp_path / "elsewhere" / "x.jpg")
    (folder / "images" / "escape").symlink_to(outside.parent)
    entries = json.loads((folder / "split_zhou_OxfordPets.json").read_text())
    entries["train"].append(["escape/x.jpg", 0, "abyssinian"])
    (folder / "split_zhou_OxfordPets.json").write_text(json.dumps(entries, indent=4))
    report = check_dataset("coop:OxfordPets", str(tmp_path))
    assert [p.kind for p in report.errors] == ["path"]
    assert f"image 'escape/x.jpg' resolves to '{outside}'" in report.errors[0].message


# ----- Ctrl-C says what each command leaves behind -----
def test_ctrl_c_in_predict_does_not_promise_a_resume(prompt_folder, image_folder, capsys, monkeypatch):
    def pressed(item):
        raise KeyboardInterrupt  # the user's Ctrl-C while images are read

    monkeypatch.setattr("vlprompt.eval.image_predict.load_image", pressed)
    code, _, err = run_cli(["predict", str(prompt_folder), str(image_folder)], capsys)
    assert code == 130
    assert err.strip() == "interrupted; no predictions were written (--output is written only once every image " \
                          "is scored)"


def test_ctrl_c_in_train_says_the_rerun_resumes(tmp_path, capsys, monkeypatch):
    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("vlprompt.experiment.run_experiment", pressed)
    code, _, err = run_cli(["train", *TINY_TRAIN, f"out={tmp_path / 'run'}"], capsys)
    assert code == 130 and "rerunning the same command resumes from the last saved state" in err


# ----- the NaN message fits the run's precision -----
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_diverged_message_suggests_fp32_only_to_a_bf16_run(tmp_path, precision):
    from test_trainer import make_task

    from vlprompt.backbones.tiny import tiny_timm_vit
    from vlprompt.train import TrainConfig, Trainer

    task = make_task()
    method = create_method("linear", tiny_timm_vit(seed=0), task.labels)
    with torch.no_grad():
        method.head.weight.fill_(float("nan"))
    config = TrainConfig(epochs=1, batch_size=4, progress=False, precision=precision)
    with pytest.raises(VlpromptError, match="loss became nan") as error:
        Trainer(method, config, out_dir=tmp_path).fit(task)
    suggestion = "use train.precision=fp32 (now bf16), "
    assert (suggestion in str(error.value)) == (precision == "bf16")
    assert "precision=fp32" not in str(error.value) or precision == "bf16"


# ----- report into an unwritable folder -----
def test_report_into_an_unwritable_folder_does_not_say_nothing_was_trained(tmp_path, capsys):
    from test_report import make_run

    make_run(tmp_path / "runs", "a", [{"method": "coop", "dataset": "world:shapes", "accuracy": 0.5}])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(["report", str(tmp_path / "runs"), "--out", str(blocker / "report")], capsys)
    assert code == 2 and f"The report folder '{blocker / 'report'}' is not writable" in err
    assert "trained" not in err and "nothing was done" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_report_on_a_read_only_runs_folder_says_so(tmp_path, capsys):
    from test_report import make_run

    runs = tmp_path / "runs"
    make_run(runs, "a", [{"method": "coop", "dataset": "world:shapes", "accuracy": 0.5}])
    runs.chmod(0o555)
    try:
        code, _, err = run_cli(["report", str(runs)], capsys)
    finally:
        runs.chmod(0o755)
    assert code == 2 and f"The report folder '{runs / 'report'}' is not writable" in err and "trained" not in err
