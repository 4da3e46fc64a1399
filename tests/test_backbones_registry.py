"""Loading backbones by name: registered names, local weight files, clear errors offline and on bad names."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from optional_extras import needs_transformers  # pytest puts tests/ on sys.path
from safetensors.torch import save_file

from vlprompt.backbones import tiny
from vlprompt.backbones.registry import create_backbone, list_backbones, register_backbone
from vlprompt.core.errors import CheckpointError, MissingExtraError, VlpromptError

TINY_TIMM = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_list_backbones_has_tiny_names_and_patterns():
    names = list_backbones()
    for name in (
        "tiny:timm_vit",
        "tiny:open_clip",
        "tiny:hf_clip",
        "timm:<arch>[.<tag>]",
        "hf:<repo-or-path>",
    ):
        assert name in names


def test_registered_tiny_name_creates_backbone():
    backbone = create_backbone("tiny:open_clip_custom_text", seed=1)
    assert backbone.kind == "clip" and backbone.text is not None
    assert backbone.weights_hash() == tiny.tiny_open_clip_custom_text(seed=1).weights_hash()


def test_register_backbone_twice_raises():
    register_backbone("test:only-once")(lambda **kw: tiny.tiny_timm_vit())
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone("test:only-once")(lambda **kw: tiny.tiny_timm_vit())


@pytest.mark.parametrize(
    "name,expected",
    [
        ("tiny:open_clp", "tiny:open_clip"),
        ("timm:vit_tiny_patch16_2244", "vit_tiny_patch16_224"),
        ("timm:vit_tiny_patch16_224.augreg_in21", "augreg_in21k"),
        ("open_clip:ViT-B-166@openai", "ViT-B-16"),
        ("open_clip:ViT-B-16@opena", "openai"),
    ],
)
def test_unknown_names_list_close_names(name, expected):
    with pytest.raises(VlpromptError) as info:
        create_backbone(name)
    assert expected in str(info.value)


def test_unknown_prefix():
    with pytest.raises(VlpromptError, match="Unknown backbone 'tim:vit'"):
        create_backbone("tim:vit")


@pytest.mark.parametrize(
    "name,hint",
    [
        ("timm:vit_tiny_patch16_224", "weights=PATH"),
        ("open_clip:ViT-B-32@openai", "open_clip:ViT-B-32@none"),
        pytest.param("hf:openai/clip-vit-base-patch32", "hf:/path/to/folder", marks=needs_transformers),
    ],
)
def test_offline_missing_weights_explains_how_to_provide_them(offline, name, hint):
    with pytest.raises(VlpromptError) as info:
        create_backbone(name)
    message = str(info.value)
    assert "No weights" in message and hint in message and "random" in message


def test_timm_random_init_without_weights(offline):
    backbone = create_backbone("timm:vit_tiny_patch16_224", pretrained=False, **TINY_TIMM)
    assert backbone.visual.width == 32 and backbone.backbone_id.endswith("#random")


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_timm_local_weight_file(offline, tmp_path, suffix):
    source = tiny.tiny_timm_vit("vit", seed=5)
    path = tmp_path / f"weights.{suffix}"
    state = source.extra["model"].state_dict()
    save_file(state, str(path)) if suffix == "safetensors" else torch.save(state, path)
    loaded = create_backbone("timm:vit_tiny_patch16_224", weights=str(path), **TINY_TIMM)
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.visual(images), source.visual(images), atol=0, rtol=0)
    assert loaded.weights_hash() == source.weights_hash()


def test_timm_wrong_architecture_checkpoint_is_refused(offline, tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file(tiny.tiny_timm_vit("vit").extra["model"].state_dict(), str(path))
    with pytest.raises(CheckpointError, match="do not fit backbone"):
        create_backbone("timm:vit_tiny_patch16_224", weights=str(path), **{**TINY_TIMM, "depth": 3})


def test_timm_missing_weight_file(offline, tmp_path):
    with pytest.raises(VlpromptError, match="does not exist"):
        create_backbone("timm:vit_tiny_patch16_224", weights=str(tmp_path / "nope.safetensors"))


def _register_open_clip_config(tmp_path, name: str, text_width: int) -> None:
    import open_clip

    config = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "patch_size": 8,
            "width": 64,
            "layers": 2,
            "head_width": 32,
            "mlp_ratio": 2.0,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": text_width,
            "heads": 2,
            "layers": 2,
            "mlp_ratio": 2.0,
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)


def test_open_clip_local_file_and_wrong_architecture(offline, tmp_path):
    source = tiny.tiny_open_clip(seed=2)
    weights = tmp_path / "tiny_clip.pt"
    torch.save(source.extra["model"].state_dict(), weights)
    _register_open_clip_config(tmp_path, "vlprompt-test-tiny", text_width=32)
    loaded = create_backbone(f"open_clip:vlprompt-test-tiny@{weights}")
    ids = loaded.text.tokenize(["a photo of a dog"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.text(ids), source.text(ids), atol=0, rtol=0)
        torch.testing.assert_close(loaded.visual(_images()), source.visual(_images()), atol=0, rtol=0)
    assert loaded.logit_scale == pytest.approx(source.logit_scale)

    _register_open_clip_config(tmp_path, "vlprompt-test-tiny-wide", text_width=64)
    with pytest.raises(CheckpointError, match="do not fit backbone"):
        create_backbone(f"open_clip:vlprompt-test-tiny-wide@{weights}")


@needs_transformers
def test_hf_local_folder(offline, tmp_path):
    source = tiny.tiny_hf_clip(seed=3)
    source.extra["model"].save_pretrained(tmp_path)
    tiny.hf_clip_tokenizer().save_pretrained(tmp_path)
    loaded = create_backbone(f"hf:{tmp_path}")
    ids = loaded.text.tokenize(["a photo of a dog"])
    assert torch.equal(ids, source.text.tokenize(["a photo of a dog"]))
    with torch.no_grad():
        torch.testing.assert_close(loaded.text(ids), source.text(ids), atol=1e-6, rtol=0)
        torch.testing.assert_close(loaded.visual(_images()), source.visual(_images()), atol=1e-6, rtol=0)


@needs_transformers
def test_hf_non_clip_folder_is_refused(offline, tmp_path):
    from transformers import BertConfig

    BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(tmp_path)
    tiny.hf_clip_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(VlpromptError, match="loads CLIP models"):
        create_backbone(f"hf:{tmp_path}")


def test_boolean_options_from_strings(offline):
    backbone = create_backbone("timm:vit_tiny_patch16_224", pretrained="false", **TINY_TIMM)
    assert backbone.visual.num_blocks == 2
    with pytest.raises(VlpromptError, match="not a boolean"):
        create_backbone("timm:vit_tiny_patch16_224", pretrained="maybe")


def test_open_clip_name_without_weights_is_refused():
    with pytest.raises(VlpromptError, match="@none"):
        create_backbone("open_clip:ViT-B-32")


def test_open_clip_local_dir(offline, tmp_path):
    source = tiny.tiny_open_clip(seed=4)
    config = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32,
                           "mlp_ratio": 2.0},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                         "mlp_ratio": 2.0},
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    save_file(source.extra["model"].state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    loaded = create_backbone(f"open_clip:local-dir:{tmp_path}")
    assert loaded.preprocess.mean == (0.5, 0.5, 0.5) and loaded.preprocess.image_size == 32
    ids = loaded.text.tokenize(["a photo of a dog"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.text(ids), source.text(ids), atol=0, rtol=0)
    with pytest.raises(VlpromptError, match="not an open_clip model folder"):
        create_backbone(f"open_clip:local-dir:{tmp_path / 'missing'}")


def test_hf_names_without_transformers_name_the_extra(offline, monkeypatch, tmp_path):
    # transformers absent, as after a plain `pip install vlprompt`: None in sys.modules makes its import fail.
    monkeypatch.setitem(sys.modules, "transformers", None)
    for name in ("tiny:hf_clip", f"hf:{tmp_path}"):
        with pytest.raises(MissingExtraError, match=r"transformers is not installed.*vlprompt\[hf\]"):
            create_backbone(name)
