"""Dataset formats read as distributed: small fake trees with real JPEG/PNG files written by PIL."""

from __future__ import annotations

import json

import pytest
from test_formats_trees import coop_pets, vtab_task, write_image, write_truncated_jpeg

from vlprompt.core.errors import ConfigError, DataError, VlpromptError
from vlprompt.data.formats.common import ImageLoader, split_checksum
from vlprompt.data.registry import list_datasets, load_dataset


def test_coop_split_file_loads_with_template_and_stable_names(tmp_path):
    coop_pets(tmp_path)
    task = load_dataset("coop:OxfordPets", str(tmp_path))
    assert task.name == "coop:OxfordPets"
    assert task.labels.classnames == ["abyssinian", "beagle"]
    assert task.labels.templates == ["a photo of a {}, a type of pet."]
    assert (len(task.train), len(task.val), len(task.test)) == (6, 2, 4)
    assert task.train.labels == [0, 0, 0, 1, 1, 1]
    assert task.train.sources[0] == "abyssinian_train_0.jpg"
    assert task.train.name == "coop:OxfordPets/train"
    image, label = task.train[0]
    assert image.mode == "RGB" and image.size == (8, 8) and label == 0
    assert task.meta["checksums"]["train"] == split_checksum(task.train.sources, task.train.labels)
    # The dataset folder itself works as root too.
    assert load_dataset("coop:OxfordPets", str(tmp_path / "oxford_pets")).labels.num_classes == 2


def test_coop_templates_and_folders_are_data():
    from vlprompt.data.formats.coop import coop_datasets

    specs = coop_datasets()
    few_shot = [name for name, spec in specs.items() if "variant_of" not in spec]
    assert len(few_shot) == 11 and len(specs) == 15
    assert specs["DTD"]["template"] == "{} texture."
    assert specs["EuroSAT"]["template"] == "a centered satellite photo of {}."
    assert specs["Flowers102"]["split_file"] == "split_zhou_OxfordFlowers.json"
    assert {f"coop:{name}" for name in specs} <= set(list_datasets())


def test_coop_split_errors_stop_loading_with_file_and_line(tmp_path):
    entries = {
        "train": [
            ["a.jpg", 0, "cat"],
            ["../outside.jpg", 0, "cat"],
            ["b.jpg", "one", "dog"],
            ["c.jpg", 1, "dog"],
        ],
        "val": [],
        "test": [["d.jpg", 0, "cat"], ["e.jpg", 1, "dog"]],
    }
    coop_pets(tmp_path, entries)
    with pytest.raises(DataError) as info:
        load_dataset("coop:OxfordPets", str(tmp_path))
    message = str(info.value)
    assert "split_zhou_OxfordPets.json:" in message
    lines = (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").read_text().splitlines()
    outside_line = next(i for i, text in enumerate(lines, 1) if "../outside.jpg" in text)
    assert f"split_zhou_OxfordPets.json:{outside_line}: image path '../outside.jpg' climbs out" in message
    assert "label 'one'" in message and "not an integer" in message


def test_imagenet_own_files(tmp_path):
    folder = tmp_path / "imagenet"
    folder.mkdir()
    (folder / "classnames.txt").write_text("n02000002 goldfish\nn01000001 tench\n")
    for split, count in (("train", 2), ("val", 1)):
        for wnid in ("n01000001", "n02000002"):
            for i in range(count):
                write_image(folder / "images" / split / wnid / f"{wnid}_{i}.JPEG")
    task = load_dataset("coop:ImageNet", str(tmp_path))
    assert task.labels.classnames == ["tench", "goldfish"]  # sorted wnid order, as CoOp labels them
    assert task.val is None  # never validate on ImageNet's val, which is its test set
    assert task.train.labels == [0, 0, 1, 1] and len(task.test) == 2
    assert task.test.sources[0] == "val/n01000001/n01000001_0.JPEG"
    assert task.train[0][0].size == (8, 8)


def test_fgvc_aircraft_own_list_files(tmp_path):
    folder = tmp_path / "fgvc_aircraft"
    folder.mkdir()
    (folder / "variants.txt").write_text("707-320\nA300B4\n")
    for split in ("train", "val", "test"):
        lines = []
        for i, variant in enumerate(("707-320", "A300B4")):
            image_id = f"{split}{i}"
            write_image(folder / "images" / f"{image_id}.jpg")
            lines.append(f"{image_id} {variant}")
        (folder / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    task = load_dataset("coop:FGVCAircraft", str(tmp_path))
    assert task.labels.classnames == ["707-320", "A300B4"]
    assert task.labels.templates == ["a photo of a {}, a type of aircraft."]
    assert task.train.sources == ["train0.jpg", "train1.jpg"] and task.train.labels == [0, 1]

    (folder / "images_variant_test.txt").write_text("test0 707-320\ntest1 Boeing 999\n")
    with pytest.raises(
        DataError, match=r"images_variant_test.txt:2: variant 'Boeing 999' is not in variants.txt"
    ):
        load_dataset("coop:FGVCAircraft", str(tmp_path))


def test_vtab_select_and_final_splits(tmp_path):
    vtab_task(tmp_path)
    select = load_dataset("vtab:eurosat", str(tmp_path))
    assert select.labels.num_classes == 10  # from the VTAB task table, not from the labels seen
    assert (len(select.train), len(select.val), len(select.test)) == (4, 2, 4)
    assert select.meta["vtab_group"] == "specialized"
    final = load_dataset("vtab", str(tmp_path), task="eurosat", split="final")
    assert len(final.train) == 6 and final.val is None
    assert final.train.sources[0] == "images/train800_0_0.jpg"
    with pytest.raises(ConfigError, match="split"):
        load_dataset("vtab:eurosat", str(tmp_path), split="everything")


def test_vtab_label_out_of_range_named_with_line(tmp_path):
    folder = vtab_task(tmp_path, task="kitti")
    with open(folder / "test.txt", "a") as handle:
        handle.write("images/test_0_0.jpg 7\n")
    with pytest.raises(DataError, match=r"test.txt:5: label 7 of 'images/test_0_0.jpg' is out of range"):
        load_dataset("vtab:kitti", str(tmp_path))


def test_fgvc_json_images_subfolder_sparse_ids_and_classnames(tmp_path):
    root = tmp_path / "CUB_200_2011"
    ids = {"001.Black_footed_Albatross": 3, "002.Laysan_Albatross": 7}
    for split, count in (("train", 2), ("val", 1), ("test", 1)):
        mapping = {}
        for folder, class_id in ids.items():
            for i in range(count):
                rel = f"{folder}/{split}_{i}.jpg"
                write_image(root / "images" / rel)
                mapping[rel] = class_id
        (root / f"{split}.json").write_text(json.dumps(mapping))
    (root / "classes.txt").write_text("3 001.Black_footed_Albatross\n7 002.Laysan_Albatross\n")
    task = load_dataset("fgvc", str(root))
    assert task.name == "fgvc:CUB_200_2011"
    assert task.labels.classnames == ["Black footed Albatross", "Laysan Albatross"]
    assert task.train.labels == [0, 0, 1, 1] and task.meta["class_ids"] == [3, 7]
    assert task.test[0][0].size == (8, 8)


def test_fgvc_unknown_test_id_is_out_of_range(tmp_path):
    root = tmp_path / "cars"
    write_image(root / "a.jpg")
    write_image(root / "b.jpg")
    (root / "train.json").write_text(json.dumps({"a.jpg": 1}))
    (root / "test.json").write_text(json.dumps({"b.jpg": 5}))
    with pytest.raises(DataError, match=r"test.json:1: class id 5 of 'b.jpg' is out of range"):
        load_dataset("fgvc", str(root))


def test_imagefolder_with_split_folders(tmp_path):
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            write_image(tmp_path / split / name / f"{name}_0.png")
    write_image(tmp_path / "train" / "cat" / "cat_1.jpg")
    task = load_dataset("imagefolder", str(tmp_path))
    assert task.labels.classnames == ["cat", "dog"] and task.val is None
    assert task.train.sources == ["train/cat/cat_0.png", "train/cat/cat_1.jpg", "train/dog/dog_0.png"]


def test_imagefolder_flat_gets_a_documented_seeded_split(tmp_path):
    for name in ("a", "b"):
        for i in range(10):
            write_image(tmp_path / name / f"{i}.png")
    first = load_dataset("imagefolder", str(tmp_path), seed=3)
    again = load_dataset("imagefolder", str(tmp_path), seed="3")
    other = load_dataset("imagefolder", str(tmp_path), seed=4)
    assert (len(first.train), len(first.val), len(first.test)) == (14, 2, 4)
    assert first.test.sources == again.test.sources
    assert first.test.sources != other.test.sources
    assert set(first.train.sources).isdisjoint(first.test.sources)
    assert first.meta["seeded_split"]["seed"] == 3


def test_csv_per_split_with_header_and_class_names(tmp_path):
    for split in ("train", "test"):
        rows = ["path,label"]
        for name in ("zebra", "ant"):
            write_image(tmp_path / "img" / f"{split}_{name}.jpg")
            rows.append(f"img/{split}_{name}.jpg,{name}")
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    task = load_dataset("csv", str(tmp_path), template="a photo of an {}, an animal.")
    assert task.labels.classnames == ["ant", "zebra"]
    assert task.train.labels == [1, 0]
    assert task.labels.templates == ["a photo of an {}, an animal."]


def test_csv_single_file_with_split_column_and_integer_labels(tmp_path):
    rows = []
    for split in ("train", "val", "test"):
        for label in (0, 1):
            write_image(tmp_path / f"{split}{label}.png")
            rows.append(f"{split}{label}.png,{label},{split}")
    rows.append("bad.png,x,train")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"data.csv:7: label 'x' is not an integer"):
        load_dataset("csv", str(tmp_path / "data.csv"))
    (tmp_path / "data.csv").write_text("\n".join(rows[:-1]) + "\n")
    task = load_dataset("csv", str(tmp_path), file="data.csv")
    assert (len(task.train), len(task.val), len(task.test)) == (2, 2, 2)
    assert task.labels.classnames == ["class 0", "class 1"]  # placeholder names class_<i>, read as CLIP reads them


def test_missing_root_says_which_layout_is_expected(tmp_path):
    with pytest.raises(DataError, match="split_zhou_OxfordPets.json"):
        load_dataset("coop:OxfordPets", None)
    with pytest.raises(DataError, match="train800"):
        load_dataset("vtab:cifar", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="oxford_pets"):
        load_dataset("coop:OxfordPets", str(tmp_path))


def test_unknown_option_is_a_config_error(tmp_path):
    coop_pets(tmp_path)
    with pytest.raises(ConfigError, match="unknown field 'shots'"):
        load_dataset("coop:OxfordPets", str(tmp_path), shots=4)
    with pytest.raises(VlpromptError, match="Did you mean"):
        load_dataset("coop:OxfordPet", str(tmp_path))


def test_image_loader_names_missing_and_corrupt_files(tmp_path):
    write_truncated_jpeg(tmp_path / "broken.jpg")
    loader = ImageLoader(tmp_path)
    with pytest.raises(DataError, match="broken.jpg' cannot be decoded"):
        loader("broken.jpg")
    with pytest.raises(DataError, match="gone.jpg' is missing"):
        loader("gone.jpg")


def test_missing_image_fails_loading_before_training(tmp_path):
    folder = coop_pets(tmp_path)
    (folder / "images" / "beagle_test_1.jpg").unlink()
    with pytest.raises(DataError, match="image 'beagle_test_1.jpg' is missing"):
        load_dataset("coop:OxfordPets", str(tmp_path))
    task = load_dataset("coop:OxfordPets", str(tmp_path), check_files="false")
    assert len(task.test) == 4


def test_empty_val_split_becomes_none_and_empty_train_is_refused(tmp_path):
    entries = {
        "train": [["a.jpg", 0, "cat"], ["b.jpg", 1, "dog"]],
        "val": [],
        "test": [["c.jpg", 0, "cat"], ["d.jpg", 1, "dog"]],
    }
    coop_pets(tmp_path, entries)
    task = load_dataset("coop:OxfordPets", str(tmp_path))
    assert task.val is None and "val" not in task.meta["splits"]
    coop_pets(tmp_path, {**entries, "train": []})
    with pytest.raises(DataError, match="the train split has no usable images"):
        load_dataset("coop:OxfordPets", str(tmp_path))


def test_imagenet_flat_val_folder_is_explained(tmp_path):
    folder = tmp_path / "imagenet"
    folder.mkdir()
    (folder / "classnames.txt").write_text("n01000001 tench\n")
    write_image(folder / "images" / "train" / "n01000001" / "a.JPEG")
    write_image(folder / "images" / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="one folder per class"):
        load_dataset("coop:ImageNet", str(tmp_path))


def test_imagenet_variants_are_test_only_targets(tmp_path):
    names = "n01000001 tench\nn02000002 goldfish\nn03000003 shark\n"
    rendition = tmp_path / "imagenet-rendition"
    rendition.mkdir()
    (rendition / "classnames.txt").write_text(names)
    for wnid in ("n03000003", "n01000001"):  # ImageNet-R holds a subset of the classes
        write_image(rendition / "imagenet-r" / wnid / "art_0.jpg")
    task = load_dataset("coop:ImageNetR", str(tmp_path))
    assert task.labels.classnames == ["tench", "shark"] and task.meta["wnids"] == ["n01000001", "n03000003"]
    assert len(task.train) == 0 and task.meta["test_only"] and task.test.labels == [0, 1]

    v2 = tmp_path / "imagenetv2"
    v2.mkdir()
    (v2 / "classnames.txt").write_text(names)
    for index in range(3):
        write_image(v2 / "imagenetv2-matched-frequency-format-val" / str(index) / "a.jpeg")
    task = load_dataset("coop:ImageNetV2", str(tmp_path))
    assert task.labels.classnames == ["tench", "goldfish", "shark"]
    assert task.test.sources == ["0/a.jpeg", "1/a.jpeg", "2/a.jpeg"] and task.test.labels == [0, 1, 2]
