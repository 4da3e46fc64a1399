"""Prompt artifacts: save_pretrained / from_pretrained, identity by weights hash, tensor checksums, legacy
folders, the model card, and open_clip:hf-hub names from a local HF cache."""
from __future__ import annotations

import builtins
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from artifact_helpers import LABELS, images, randomize
from safetensors.torch import save_file

import vlprompt
from vlprompt.artifacts.checkpoint import load_prompts, save_prompts, tensors_checksum
from vlprompt.backbones import tiny
from vlprompt.backbones.registry import create_backbone
from vlprompt.core.errors import CheckpointError, VlpromptError
from vlprompt.data.transforms import eval_transform
from vlprompt.methods import create_method
from vlprompt.train import TrainConfig, Trainer

TINY_TIMM = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def batch(backbone, count: int = 6) -> torch.Tensor:
    transform = eval_transform(backbone.preprocess)
    return torch.stack([transform(image) for image in images(count)])


def logits(method, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return method.eval().predict({"image": x})


@pytest.fixture(scope="module")
def clip():
    return create_backbone("tiny:open_clip")


def test_round_trip_rebuilds_backbone_and_method_without_pickle(clip, tmp_path, monkeypatch):
    method = create_method("coop", clip, LABELS, n_ctx=3, ctx_init="")
    randomize(method, 1)
    vlprompt.save_pretrained(method, tmp_path / "art", extra={"val_accuracy": 0.5})
    config = json.loads((tmp_path / "art" / "prompt_config.json").read_text())
    assert config["method"] == "coop" and config["method_config"]["n_ctx"] == 3
    assert config["backbone"] == {"id": clip.backbone_id, "name": "tiny:open_clip", "options": {},
                                  "weights_hash": clip.weights_hash()}
    assert config["classnames"] == LABELS.classnames and config["templates"] == LABELS.templates
    assert config["version"] == vlprompt.__version__ and len(config["tensors_sha256"]) == 64
    card = (tmp_path / "art" / "README.md").read_text()
    assert "coop" in card and "from_pretrained" in card and "50.00" in card

    def no_pickle(*args, **kwargs):
        raise AssertionError("loading a prompt artifact must not unpickle anything")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    loaded = vlprompt.from_pretrained(tmp_path / "art")  # backbone rebuilt from the stored spec
    assert loaded.backbone is not clip
    torch.testing.assert_close(logits(loaded, batch(clip)), logits(method, batch(clip)), atol=0, rtol=0)


def test_other_weights_under_the_same_name_are_refused(clip, tmp_path):
    method = create_method("linear", clip, LABELS)
    save_prompts(method, tmp_path)
    other = create_backbone("tiny:open_clip", seed=1)
    assert other.backbone_id != clip.backbone_id
    with pytest.raises(CheckpointError, match="weights hash"):
        vlprompt.from_pretrained(tmp_path, backbone=other)


def test_a_moved_weights_file_loads_and_changed_weights_are_refused(tmp_path):
    source = tiny.tiny_timm_vit("vit", seed=5)
    first = tmp_path / "a" / "weights.safetensors"
    first.parent.mkdir()
    save_file(source.extra["model"].state_dict(), str(first))
    backbone = create_backbone("timm:vit_tiny_patch16_224", weights=str(first), **TINY_TIMM)
    method = create_method("vpt-shallow", backbone, LABELS, num_tokens=2)
    randomize(method, 2)
    vlprompt.save_pretrained(method, tmp_path / "run")
    assert vlprompt.from_pretrained(tmp_path / "run").backbone.weights_hash() == backbone.weights_hash()

    moved = tmp_path / "b" / "renamed.safetensors"
    moved.parent.mkdir()
    shutil.move(first, moved)
    with pytest.raises(CheckpointError, match="backbone=create_backbone"):
        vlprompt.from_pretrained(tmp_path / "run")  # the stored path is gone: the error says how to pass it
    at_new_path = create_backbone("timm:vit_tiny_patch16_224", weights=str(moved), **TINY_TIMM)
    loaded = vlprompt.from_pretrained(tmp_path / "run", backbone=at_new_path)
    torch.testing.assert_close(logits(loaded, batch(backbone)), logits(method, batch(backbone)), atol=0, rtol=0)

    save_file(tiny.tiny_timm_vit("vit", seed=6).extra["model"].state_dict(), str(first))  # other weights, old name
    with pytest.raises(CheckpointError, match="weights hash"):
        vlprompt.from_pretrained(tmp_path / "run")


def test_a_tensor_file_swapped_in_from_another_run_is_refused(clip, tmp_path):
    runs = []
    for seed in (1, 2):
        method = create_method("coop", clip, LABELS, n_ctx=3)
        randomize(method, seed)
        save_prompts(method, tmp_path / f"run{seed}")
        runs.append(method)
    shutil.copy(tmp_path / "run2" / "prompts.safetensors", tmp_path / "run1" / "prompts.safetensors")
    fresh = create_method("coop", clip, LABELS, n_ctx=3)
    with pytest.raises(CheckpointError, match="checksum.*copied in from another run"):
        load_prompts(fresh, tmp_path / "run1")
    load_prompts(fresh, tmp_path / "run2")
    torch.testing.assert_close(fresh.prompt.ctx, runs[1].prompt.ctx, atol=0, rtol=0)


def test_checksum_covers_names_shapes_and_values():
    base = {"a": torch.zeros(2, 3), "b": torch.ones(1)}
    assert tensors_checksum(base) == tensors_checksum({k: v.clone() for k, v in base.items()})
    assert tensors_checksum(base) != tensors_checksum({"a": torch.zeros(3, 2), "b": torch.ones(1)})
    assert tensors_checksum(base) != tensors_checksum({"c": torch.zeros(2, 3), "b": torch.ones(1)})
    changed = {"a": torch.zeros(2, 3), "b": torch.ones(1) + 1e-7}
    assert tensors_checksum(base) != tensors_checksum(changed)


def test_a_0_1_run_folder_is_refused_with_what_to_do(clip, tmp_path):
    method = create_method("coop", clip, LABELS, n_ctx=2)
    save_prompts(method, tmp_path)
    config = json.loads((tmp_path / "prompt_config.json").read_text())
    legacy = {k: config[k] for k in ("library", "version", "method", "method_config", "classnames", "shapes")}
    legacy["backbone"] = clip.backbone_id  # 0.1 stored the id string, no hash, no checksum, no templates
    (tmp_path / "prompts.json").write_text(json.dumps(legacy))
    (tmp_path / "prompt_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"holds prompts.json, the prompt config of vlprompt 0.1.*Retrain"):
        vlprompt.from_pretrained(tmp_path, backbone=clip)


def test_a_stored_option_this_version_lacks_is_dropped_with_a_warning(clip, tmp_path, caplog):
    method = create_method("coop", clip, LABELS, n_ctx=2)
    randomize(method, 3)
    save_prompts(method, tmp_path)
    config = json.loads((tmp_path / "prompt_config.json").read_text())
    config["method_config"]["retired_option"] = 0
    (tmp_path / "prompt_config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        loaded = vlprompt.from_pretrained(tmp_path, backbone=clip)
    assert "ignoring stored coop option(s) retired_option" in caplog.text
    torch.testing.assert_close(loaded.prompt.ctx, method.prompt.ctx, atol=0, rtol=0)


def test_a_config_without_a_backbone_hash_or_templates_is_refused(clip, tmp_path):
    method = create_method("coop", clip, LABELS, n_ctx=2)
    save_prompts(method, tmp_path)
    config = json.loads((tmp_path / "prompt_config.json").read_text())
    (tmp_path / "prompt_config.json").write_text(json.dumps({**config, "backbone": clip.backbone_id}))
    with pytest.raises(CheckpointError, match="'backbone' field is .*weights_hash"):
        vlprompt.from_pretrained(tmp_path, backbone=clip)
    (tmp_path / "prompt_config.json").write_text(json.dumps({**config, "templates": []}))
    with pytest.raises(CheckpointError, match="records no templates"):
        vlprompt.from_pretrained(tmp_path, backbone=clip)


def test_a_train_run_folder_is_an_artifact_and_keeps_a_users_readme(tmp_path):
    from test_trainer import make_task

    backbone = create_backbone("tiny:timm_vit")
    task = make_task()
    method = create_method("linear", backbone, task.labels)
    config = TrainConfig(epochs=1, batch_size=4, lr=0.05, progress=False)
    Trainer(method, config, out_dir=tmp_path / "run").fit(task)
    loaded = vlprompt.from_pretrained(tmp_path / "run")
    x = batch(backbone)
    torch.testing.assert_close(logits(loaded, x), logits(method, x), atol=0, rtol=0)
    assert "linear prompt" in (tmp_path / "run" / "README.md").read_text()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.md").write_text("my notes\n")
    vlprompt.save_pretrained(method, tmp_path / "mine")
    assert (tmp_path / "mine" / "README.md").read_text() == "my notes\n"


def test_weights_hash_is_cached_per_backbone_object(monkeypatch):
    backbone = tiny.tiny_timm_vit("vit", seed=0)
    first = backbone.weights_hash()
    calls = []
    original = builtins.sorted
    monkeypatch.setattr(builtins, "sorted", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert backbone.weights_hash() == first and not calls
    assert tiny.tiny_timm_vit("vit", seed=1).weights_hash() != first


def test_the_hash_is_fixed_before_fine_tuning_changes_the_weights(tmp_path):
    from test_trainer import make_task

    backbone = create_backbone("tiny:timm_vit")
    as_loaded = backbone.weights_hash()
    task = make_task()
    method = create_method("partial-k", backbone, task.labels)
    Trainer(method, TrainConfig(epochs=1, batch_size=4, lr=0.05, progress=False), out_dir=tmp_path).fit(task)
    stored = json.loads((tmp_path / "prompt_config.json").read_text())["backbone"]["weights_hash"]
    assert stored == as_loaded
    loaded = vlprompt.from_pretrained(tmp_path)  # a fresh backbone: the trained blocks come from the artifact
    x = batch(backbone)
    torch.testing.assert_close(logits(loaded, x), logits(method, x), atol=1e-6, rtol=1e-5)


# ----- open_clip:hf-hub:<repo> from a local HF cache -----
def _fake_hub_cache(root: Path, repo: str, weights_seed: int | None) -> None:
    """An HF hub cache (models--owner--name/{refs/main, snapshots/<commit>/...}) holding a tiny open_clip model."""
    vision, text = tiny._tiny_clip_cfgs({})
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = root / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(commit)
    config = {"model_cfg": {"embed_dim": 32, "vision_cfg": vision, "text_cfg": text},
              "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    if weights_seed is not None:
        state = tiny.tiny_open_clip(seed=weights_seed).extra["model"].state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "open_clip_model.safetensors"))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_open_clip_hf_hub_name_loads_from_the_local_cache_offline(hub_cache):
    _fake_hub_cache(hub_cache, "tinyorg/tiny-clip", weights_seed=2)
    backbone = create_backbone("open_clip:hf-hub:tinyorg/tiny-clip")
    reference = tiny.tiny_open_clip(seed=2)
    assert backbone.backbone_id == "open_clip:hf-hub:tinyorg/tiny-clip"
    assert backbone.weights_hash() == reference.weights_hash()
    assert backbone.preprocess.mean == (0.5, 0.5, 0.5)
    ids = backbone.text.tokenize(["a photo of a red"])
    with torch.no_grad():
        torch.testing.assert_close(backbone.text(ids), reference.text(ids), atol=0, rtol=0)


def test_open_clip_hf_hub_name_absent_or_without_weights_gives_the_clear_error(hub_cache):
    with pytest.raises(VlpromptError, match="No weights for backbone 'open_clip:hf-hub:nobody/absent'"):
        create_backbone("open_clip:hf-hub:nobody/absent")
    _fake_hub_cache(hub_cache, "tinyorg/config-only", weights_seed=None)
    with pytest.raises(VlpromptError, match="No weights"):
        create_backbone("open_clip:hf-hub:tinyorg/config-only")
    with pytest.raises(VlpromptError, match="not a Hugging Face repo id"):
        create_backbone("open_clip:hf-hub:just-a-name")
    assert "open_clip:hf-hub:<repo>" in vlprompt.list_backbones()
