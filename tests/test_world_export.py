"""World tasks exported to real layouts read back through the format readers (the README's workflows)."""
from __future__ import annotations

from pathlib import Path

from vlprompt.cli import main
from vlprompt.data.registry import load_dataset


def test_imagefolder_export_checks_and_trains(tmp_path: Path, capsys):
    root = tmp_path / "folder"
    assert main(["world", "export", "object", "--out", str(root), "--per-class", "2"]) == 0
    assert main(["data", "check", "imagefolder", str(root)]) == 0
    task = load_dataset("imagefolder", root=str(root))
    assert task.labels.num_classes == 24 and len(task.train) == 48
    code = main(["train", "method=linear", "backbone=tiny:timm_vit", "dataset=imagefolder", f"root={root}",
                 "shots=1", "train.epochs=1", f"out={tmp_path / 'run'}"])
    assert code == 0, capsys.readouterr().err


def test_vtab_export_has_the_four_split_files(tmp_path: Path):
    assert main(["world", "export", "count", "--format", "vtab", "--out", str(tmp_path), "--per-class", "2"]) == 0
    folder = tmp_path / "world-count"
    lines = {name: (folder / f"{name}.txt").read_text().splitlines() for name in
             ("train800", "val200", "train800val200", "test")}
    assert len(lines["train800"]) == 800 and len(lines["val200"]) == 200
    assert lines["train800val200"] == lines["train800"] + lines["val200"]
    task = load_dataset("vtab", root=str(tmp_path), task="world-count", classnames="classnames.txt")
    assert task.labels.classnames == ["one", "two", "three", "four"]


def test_export_at_224_px_as_jpeg_reads_back(tmp_path: Path):
    from PIL import Image

    root = tmp_path / "jpegs"
    assert main(["world", "export", "object", "--out", str(root), "--per-class", "1", "--image-size", "224",
                 "--image-format", "jpeg"]) == 0
    files = sorted((root / "train").rglob("*"))
    images = [f for f in files if f.is_file()]
    assert len(images) == 24 and all(f.suffix == ".jpg" for f in images)
    with Image.open(images[0]) as image:
        assert image.format == "JPEG" and image.size == (224, 224)
    task = load_dataset("imagefolder", root=str(root))
    assert len(task.train) == 24 and task.train[0][0].size == (224, 224)
