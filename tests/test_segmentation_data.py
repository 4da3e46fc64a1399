"""Segmentation data: world masks from the renderer, ADE20K's reduce_zero_label, the folder / CSV formats, aligned
augmentation, and `vlprompt data check` naming each bad mask."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlprompt.backbones.base import PreprocessConfig
from vlprompt.core.errors import DataError
from vlprompt.data.check import check_dataset
from vlprompt.data.mask_transforms import SegmentationEvalTransform, SegmentationTrainTransform
from vlprompt.data.registry import load_dataset
from vlprompt.data.segmentation import reduce_zero_label
from vlprompt.data.world.render import Scene, WorldObject, render, render_with_objects
from vlprompt.data.world.segmentation import CLASSNAMES, world_seg_pair
from vlprompt.data.world.vocab import VOCAB


def test_world_masks_are_the_rendered_objects_pixels():
    square = WorldObject("square", "red", "solid", 0.5, 0.5, 0.3)
    scene = Scene((square,), "plain", "cartoon", seed=3)
    pixels, owner = render_with_objects(scene, 32)
    assert np.array_equal(pixels, render(scene, 32))  # the image is unchanged by asking for the masks
    # the square spans 0.5 +- 0.75 * 0.3 of the image: pixel centres in (0.275, 0.725) -> columns/rows 9..22
    expected = np.full((32, 32), -1)
    expected[9:23, 9:23] = 0
    assert np.array_equal(owner, expected)
    # a later object is drawn over an earlier one, and owns the overlap
    circle = WorldObject("circle", "blue", "solid", 0.5, 0.5, 0.1)
    _, owner = render_with_objects(Scene((square, circle), "plain", "photo", seed=3), 32)
    assert owner[16, 16] == 1 and owner[10, 10] == 0 and owner[0, 0] == -1


def test_world_segmentation_task_labels_shapes_and_background():
    task = load_dataset("world-seg", train_images=4, val_images=0, test_images=2)
    assert task.labels.classnames[0] == "background" and task.labels.num_classes == 1 + len(VOCAB.shapes)
    assert task.val is None and len(task.train) == 4 and task.train.task_type == "segmentation"
    image, mask = task.train[0]
    values = set(np.unique(np.asarray(mask)).tolist())
    assert image.size == mask.size == (32, 32) and 0 in values and values <= set(range(len(CLASSNAMES)))
    image_again, mask_again = world_seg_pair("seg", VOCAB.seen_styles, "train", 0, 0, 32)
    assert np.array_equal(np.asarray(mask), np.asarray(mask_again))  # deterministic in (name, split, index, seed)
    assert np.array_equal(np.asarray(image), np.asarray(image_again))
    shifted = load_dataset("world-seg-sketch", train_images=1, test_images=1)
    assert shifted.labels.classnames == task.labels.classnames


def test_reduce_zero_label_is_ade20ks_convention():
    values = np.array([[0, 1, 150, 255]])
    assert reduce_zero_label(values).tolist() == [[255, 0, 149, 255]]


CONFIG = PreprocessConfig(image_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear")


def _striped_pair(width: int = 40, height: int = 24) -> tuple[Image.Image, Image.Image]:
    """Vertical stripes 8 px wide: the mask's class k where the image's red channel is 20 * k."""
    classes = (np.arange(width) // 8)[None, :].repeat(height, axis=0).astype(np.uint8)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = classes * 20
    return Image.fromarray(pixels), Image.fromarray(classes, mode="L")


def test_train_augmentation_keeps_image_and_mask_aligned():
    image, mask = _striped_pair()
    transform = SegmentationTrainTransform(CONFIG, "flip")
    for seed in range(8):
        torch.manual_seed(seed)
        tensor, labels = transform(image, mask)
        assert tensor.shape == (3, 16, 16) and labels.shape == (16, 16) and labels.dtype == torch.long
        inside = labels != 255
        red = (tensor[0] * 255 / 20).round().long()
        # away from stripe borders (bilinear blends the image there, never the nearest-neighbour mask)
        steady = inside.clone()
        steady[:, 1:] &= labels[:, 1:] == labels[:, :-1]
        steady[:, :-1] &= labels[:, :-1] == labels[:, 1:]
        assert steady.sum() > 0
        assert torch.equal(red[steady], labels[steady])


def test_eval_transform_resizes_masks_by_nearest_neighbour():
    image, mask = _striped_pair(32, 32)
    _, labels = SegmentationEvalTransform(CONFIG)(image, mask)
    assert set(labels.unique().tolist()) == {0, 1, 2, 3}  # no label invented between classes


def _write_ade(root: Path) -> None:
    rng = np.random.default_rng(0)
    for folder, count in (("training", 3), ("validation", 2)):
        (root / "images" / folder).mkdir(parents=True)
        (root / "annotations" / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(
                root / "images" / folder / f"ADE_{folder}_{i}.jpg")
            values = np.full((20, 28), i + 1, dtype=np.uint8)
            values[0, 0] = 0
            Image.fromarray(values).save(root / "annotations" / folder / f"ADE_{folder}_{i}.png")


def test_ade20k_layout_loads_with_reduce_zero_label(tmp_path: Path):
    _write_ade(tmp_path)
    task = load_dataset("ade20k", root=str(tmp_path), val_images=1)
    assert task.labels.num_classes == 150 and task.labels.classnames[:3] == ["wall", "building", "sky"]
    assert (len(task.train), len(task.val), len(task.test)) == (2, 1, 2)
    image, mask = task.test[1]
    values = np.asarray(mask)
    assert image.size == mask.size == (28, 20)
    assert values[0, 0] == 255 and values[5, 5] == 1  # stored 0 -> ignore, stored 2 -> class 1 ("building")


def _write_segfolder(root: Path) -> None:
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    for split in ("train", "test"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (12, 10)).save(root / "images" / split / f"{i}.png")
            Image.fromarray(np.full((10, 12), i, dtype=np.uint8)).save(root / "masks" / split / f"{i}.png")


def test_segfolder_and_csv_load_the_same_pairs(tmp_path: Path):
    _write_segfolder(tmp_path)
    rows = ["image,mask,split"] + [f"images/{s}/{i}.png,masks/{s}/{i}.png,{s}" for s in ("train", "test")
                                   for i in range(2)]
    (tmp_path / "segmentation.csv").write_text("\n".join(rows) + "\n")
    folder = load_dataset("segfolder", root=str(tmp_path))
    table = load_dataset("segcsv", root=str(tmp_path))
    assert folder.labels.classnames == table.labels.classnames == ["sky", "road", "car"]
    for a, b in ((folder.train, table.train), (folder.test, table.test)):
        assert a.sources == b.sources and a.masks == b.masks
    assert np.asarray(table.test[1][1]).max() == 1


def test_segcsv_reads_a_padded_header_and_names_each_bad_row(tmp_path: Path):
    _write_segfolder(tmp_path)
    (tmp_path / "segmentation.csv").write_text(
        " image , mask , split\nimages/train/0.png, masks/train/0.png, train\n\nimages/train/1.png,train\n"
        "images/test/0.png,masks/test/0.png,dev\nimages/test/1.png,masks/test/1.png,test\n")
    report = check_dataset("segcsv", str(tmp_path))
    located = {(p.line, p.kind, p.message) for p in report.errors if p.file.endswith("segmentation.csv")}
    assert located == {
        (4, "format", "the row has 2 cells; the header names 3 (image, mask, split)"),
        (5, "format", "split 'dev' is not one of ('train', 'val', 'test')"),
    }


def test_segcsv_refuses_paths_outside_its_root(tmp_path: Path):
    _write_segfolder(tmp_path)
    (tmp_path / "segmentation.csv").write_text(
        "image,mask,split\n../outside.png,masks/train/0.png,train\nimages/train/1.png,/etc/passwd,train\n"
        "images/test/0.png,masks/test/0.png,test\n")
    report = check_dataset("segcsv", str(tmp_path))
    located = sorted((p.line, p.kind) for p in report.errors if p.file.endswith("segmentation.csv"))
    assert located == [(2, "path"), (3, "path")]
    assert any("climbs out" in p.message for p in report.errors) and any("absolute" in p.message for p in report.errors)


def test_segcsv_that_is_not_utf8_is_a_located_problem(tmp_path: Path):
    _write_segfolder(tmp_path)
    (tmp_path / "segmentation.csv").write_bytes(b"image,mask,split\nimages/train/0\xe9.png,masks/train/0.png,train\n")
    report = check_dataset("segcsv", str(tmp_path))
    assert [(p.line, p.message) for p in report.errors if p.file.endswith("segmentation.csv")] == [
        (2, "the file is not UTF-8 text; save it as UTF-8")]
    with pytest.raises(DataError, match="segmentation.csv"):
        load_dataset("segcsv", root=str(tmp_path))


def test_data_check_names_every_bad_mask(tmp_path: Path):
    _write_segfolder(tmp_path)
    Image.fromarray(np.full((4, 4), 0, dtype=np.uint8)).save(tmp_path / "masks" / "train" / "0.png")  # wrong size
    Image.fromarray(np.full((10, 12), 7, dtype=np.uint8)).save(tmp_path / "masks" / "train" / "1.png")  # label 7
    (tmp_path / "masks" / "test" / "0.png").write_bytes(b"not a png")
    Image.new("RGB", (12, 10)).save(tmp_path / "images" / "test" / "2.png")  # no mask
    report = check_dataset("segfolder", str(tmp_path))
    assert not report.ok
    found = {(Path(p.file).relative_to(tmp_path).as_posix(), p.kind) for p in report.errors}
    assert found == {("masks/train/0.png", "size"), ("masks/train/1.png", "label"), ("masks/test/0.png", "corrupt"),
                     ("images/test/2.png", "missing")}
    with pytest.raises(DataError, match="images/test/2.png"):
        load_dataset("segfolder", root=str(tmp_path))  # loading refuses the missing mask up front


def test_world_segmentation_exports_to_the_segfolder_layout_and_reads_back(tmp_path: Path):
    from vlprompt.data.world.export import export_world_task

    root = export_world_task("world-seg", tmp_path / "seg", fmt="segfolder", per_class=4, image_size=48)
    task = load_dataset("segfolder", root=str(root))
    generated = load_dataset("world-seg", train_images=4, val_images=1, test_images=4)
    assert task.labels.classnames == generated.labels.classnames
    assert (len(task.train), len(task.val), len(task.test)) == (4, 1, 4)
    image, mask = task.test[2]
    expected = generated.test[2][1].resize((48, 48), Image.NEAREST)
    assert image.size == (48, 48) and np.array_equal(np.asarray(mask), np.asarray(expected))
    assert check_dataset("segfolder", str(root)).ok


def test_a_files_own_ignore_value_becomes_255(tmp_path: Path):
    _write_segfolder(tmp_path)
    Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8).repeat(10, 0).repeat(4, 1)).save(
        tmp_path / "masks" / "train" / "0.png")
    task = load_dataset("segfolder", root=str(tmp_path), ignore_index=2)
    assert task.labels.ignore_index == 255
    assert np.unique(np.asarray(task.train[0][1])).tolist() == [0, 1, 255]
