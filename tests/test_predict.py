"""Inference on a user's images (Python and `vlprompt predict`) and the exported image-independent classifier."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from artifact_helpers import LABELS, images, randomize

import vlprompt
from vlprompt.backbones.registry import create_backbone
from vlprompt.cli import main
from vlprompt.core.errors import CheckpointError, DataError
from vlprompt.data.transforms import eval_transform
from vlprompt.methods import create_method
from vlprompt.serve.export import classifier_head, export_classifier, load_classifier
from vlprompt.serve.inference import collect_inputs


@pytest.fixture(scope="module")
def clip():
    return create_backbone("tiny:open_clip")


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    paths = []
    for i, image in enumerate(images(5)):
        path = folder / ("sub" if i % 2 else "") / f"img{i}.png"
        image.save(path)
        paths.append(path)
    (folder / "notes.txt").write_text("not an image")
    return folder, sorted(paths)


def _logits(method, pil_images) -> torch.Tensor:
    transform = eval_transform(method.backbone.preprocess)
    with torch.no_grad():
        return method.eval().predict({"image": torch.stack([transform(i) for i in pil_images])})


def test_predict_images_gives_top_k_labels_and_softmax_probabilities(clip):
    method = create_method("coop", clip, LABELS, n_ctx=3)
    randomize(method, 1)
    pil = images(5)
    records = method.predict_images(pil, topk=2, batch_size=2)
    probs = _logits(method, pil).softmax(dim=-1)
    assert [r["input"] for r in records] == list(range(5))
    for record, row in zip(records, probs):
        top = row.topk(2)
        assert record["labels"] == [LABELS.classnames[i] for i in top.indices.tolist()]
        assert record["probs"] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert len(method.predict_images(pil[:1], topk=10)[0]["labels"]) == 3  # k capped at the class count


def test_inputs_from_a_folder_a_csv_or_one_file(image_dir, tmp_path):
    folder, paths = image_dir
    assert collect_inputs(folder) == paths
    assert collect_inputs(paths[0]) == [paths[0]]
    table = tmp_path / "list.csv"
    table.write_text("path,comment\nimgs/img0.png,x\n" + f"{paths[1]},y\n")
    assert collect_inputs(table) == [tmp_path / "imgs" / "img0.png", paths[1]]
    (tmp_path / "bad.csv").write_text("file_name,label\na.png,1\n")
    with pytest.raises(DataError, match="needs path"):
        collect_inputs(tmp_path / "bad.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        collect_inputs(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        collect_inputs(tmp_path / "missing.png")


def test_cli_predict_prints_and_writes_csv_and_json(clip, image_dir, tmp_path, capsys):
    folder, paths = image_dir
    method = create_method("coop", clip, LABELS, n_ctx=3)
    randomize(method, 2)
    vlprompt.save_pretrained(method, tmp_path / "run")
    assert main(["predict", str(tmp_path / "run"), str(folder), "--topk", "2"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 5 and printed[0].startswith(str(paths[0]))
    expected = method.predict_images(paths, topk=2)
    assert main(["predict", str(tmp_path / "run"), str(folder), "--topk", "2", "--output", str(tmp_path / "p.json"),
                 "--batch-size", "2"]) == 0
    written = json.loads((tmp_path / "p.json").read_text())
    assert [(r["input"], r["labels"]) for r in written] == [(e["input"], e["labels"]) for e in expected]
    assert [r["probs"] for r in written] == [pytest.approx(e["probs"], abs=1e-5) for e in expected]
    assert main(["predict", str(tmp_path / "run"), str(folder), "--output", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["input"] for r in rows] == [str(p) for p in paths]
    assert [r["label_1"] for r in rows] == [e["labels"][0] for e in expected]


def test_class_names_can_be_overridden_for_open_vocabulary_prompts_only(clip, image_dir, tmp_path, capsys):
    _, paths = image_dir
    coop = create_method("coop", clip, LABELS, n_ctx=3)
    randomize(coop, 3)
    vlprompt.save_pretrained(coop, tmp_path / "coop")
    new = ["cyan", "magenta", "yellow", "black"]
    on_new = vlprompt.from_pretrained(tmp_path / "coop", classnames=new)
    assert on_new.labels.classnames == new and on_new.labels.templates == LABELS.templates
    torch.testing.assert_close(on_new.prompt.ctx, coop.prompt.ctx, atol=0, rtol=0)
    assert main(["predict", str(tmp_path / "coop"), str(paths[0]), "--classnames", ",".join(new)]) == 0
    assert capsys.readouterr().out.split(": ")[1].split(" (")[0] in new
    for name, options in (("linear", {}), ("coop", {"n_ctx": 2, "class_specific": True})):
        method = create_method(name, clip, LABELS, **options)
        vlprompt.save_pretrained(method, tmp_path / name)
        with pytest.raises(CheckpointError, match="tied to its 3 training classes"):
            vlprompt.from_pretrained(tmp_path / name, classnames=new)
    assert main(["predict", str(tmp_path / "linear"), str(paths[0]), "--classnames", "a,b"]) == 2
    assert "cannot predict other class names" in capsys.readouterr().err


# ----- export --format classifier -----
EXPORTABLE = [
    ("coop", {"n_ctx": 3}),
    ("coop", {"n_ctx": 2, "class_specific": True}),
    ("kgcoop", {"n_ctx": 3}),
    ("prograd", {"n_ctx": 4}),
    ("zeroshot", {}),
    ("zeroshot-ensemble", {}),
    ("linear", {}),
    ("linear", {"normalize": True}),
]


@pytest.mark.parametrize("name,options", EXPORTABLE)
def test_plain_backbone_plus_exported_head_equals_the_method(clip, tmp_path, name, options):
    method = create_method(name, clip, LABELS, **options)
    randomize(method, 4)
    vlprompt.save_pretrained(method, tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--format", "classifier", "--out", str(tmp_path / "head")]) == 0
    head, meta = load_classifier(tmp_path / "head")
    assert meta["classnames"] == LABELS.classnames and meta["backbone"]["weights_hash"] == clip.weights_hash()
    pil = images(6)
    transform = eval_transform(clip.preprocess)
    with torch.no_grad():
        plain = clip.visual(torch.stack([transform(i) for i in pil]))  # the backbone alone, no vlprompt method
    expected = _logits(method, pil)
    torch.testing.assert_close(head(plain), expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-5)
    if name != "linear":
        assert meta["normalize_features"] and not meta["has_bias"]
        assert head.logit_scale == pytest.approx(clip.logit_scale, rel=1e-5)
        torch.testing.assert_close(head.class_features.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    else:
        assert meta["has_bias"] and meta["normalize_features"] == options.get("normalize", False)


@pytest.mark.parametrize("name,why", [
    ("cocoop", "not an affine function of the image feature"),
    ("mocoop", "not an affine function of the image feature"),
    ("vpt-shallow", "inside the image tower"),
    ("vpt-deep", "inside the image tower"),
])
def test_image_conditioned_methods_are_refused(clip, tmp_path, name, why):
    method = create_method(name, clip, LABELS)
    randomize(method, 5)
    with pytest.raises(CheckpointError, match=why):
        classifier_head(method)
    with pytest.raises(CheckpointError, match="cannot be exported"):
        export_classifier(method, tmp_path / "head")
    assert not (tmp_path / "head").exists()
