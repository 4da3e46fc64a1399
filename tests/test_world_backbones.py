"""The world backbones: storage round trips through the real libraries, and the shipped files themselves."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vlprompt.backbones import world
from vlprompt.backbones.world import (
    CLIP_DIR,
    CLIP_WEIGHTS_FILE,
    MAE_DIR,
    MAE_WEIGHTS_FILE,
    build_world_clip,
    build_world_mae,
    export_open_clip_dir,
    load_world_clip,
    load_world_mae,
    save_world_clip,
    save_world_mae,
    world_clip_tokenizer,
)
from vlprompt.core.errors import VlpromptError

TEXTS = ["a photo of a star.", "pixel art of a large red striped arrow at the top left."]
SHIPPED_CLIP = (CLIP_DIR / CLIP_WEIGHTS_FILE).is_file()
SHIPPED_MAE = (MAE_DIR / MAE_WEIGHTS_FILE).is_file()


def _fp16_rounded(model: torch.nn.Module) -> torch.nn.Module:
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    return model.eval()


@pytest.fixture(scope="module")
def saved_clip(tmp_path_factory):
    torch.manual_seed(0)
    model = _fp16_rounded(build_world_clip())
    tokenizer = world_clip_tokenizer()
    used = tokenizer(TEXTS).unique().tolist()
    directory = tmp_path_factory.mktemp("clip")
    save_world_clip(model, directory, used, {"note": "test"})
    return model, directory, used


def test_sparse_clip_round_trip_keeps_every_used_token(saved_clip):
    model, directory, used = saved_clip
    loaded, tokenizer, config = load_world_clip(directory)
    assert config["world_meta"] == {"note": "test"}
    ids = tokenizer(TEXTS)
    torch.testing.assert_close(loaded.encode_text(ids), model.encode_text(ids), rtol=0, atol=0)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images), rtol=0, atol=0)
    embedding = loaded.token_embedding.weight
    unused = torch.ones(len(embedding), dtype=torch.bool)
    unused[used] = False
    assert embedding[unused].abs().sum() == 0  # an unknown word reads as an empty embedding
    size = (directory / CLIP_WEIGHTS_FILE).stat().st_size
    assert size < 0.25 * embedding.numel() * 2  # far smaller than the dense fp16 embedding alone


def test_exported_folder_loads_with_open_clip_itself(saved_clip, tmp_path):
    import open_clip

    model, directory, _ = saved_clip
    target = export_open_clip_dir(tmp_path / "export", directory)
    loaded, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{target}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{target}")
    ids = tokenizer(TEXTS)
    assert torch.equal(ids, world_clip_tokenizer()(TEXTS))
    torch.testing.assert_close(loaded.eval().encode_text(ids), model.encode_text(ids))
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images))
    assert "Normalize" in repr(preprocess)


def test_mae_round_trip_through_timm_pretrained_loading(tmp_path):
    torch.manual_seed(0)
    model = _fp16_rounded(build_world_mae())
    save_world_mae(model, tmp_path, {"note": "test"})
    loaded = load_world_mae(tmp_path)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    assert loaded.global_pool == "avg" and loaded.pretrained_cfg["mean"] == list(world.WORLD_MEAN)


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(VlpromptError, match="pretrain_world_clip.py"):
        load_world_clip(tmp_path)
    with pytest.raises(VlpromptError, match="pretrain_world_mae.py"):
        load_world_mae(tmp_path)


@pytest.mark.skipif(not SHIPPED_CLIP, reason="the world CLIP has not been trained into the package yet")
def test_shipped_clip_through_the_adapter_is_far_above_chance_zero_shot():
    from vlprompt.backbones.registry import create_backbone
    from vlprompt.data.world.tasks import load_world_task

    backbone = create_backbone("world:clip")
    assert backbone.kind == "clip" and backbone.text is not None
    assert (CLIP_DIR / CLIP_WEIGHTS_FILE).stat().st_size < 3_000_000
    task = load_world_task("colour", train_per_class=1, val_per_class=0, test_per_class=6)
    mean = torch.tensor(backbone.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.preprocess.std).view(1, 3, 1, 1)
    images = torch.stack([torch.from_numpy(np.array(task.test[i][0])).permute(2, 0, 1) for i in range(len(task.test))])
    images = (images.float() / 255 - mean) / std
    with torch.no_grad():
        image = torch.nn.functional.normalize(backbone.visual(images), dim=-1)
        ids = backbone.text.tokenize([task.labels.templates[0].format(c) for c in task.labels.classnames])
        text = torch.nn.functional.normalize(backbone.text(ids), dim=-1)
    accuracy = ((image @ text.t()).argmax(-1) == torch.tensor(task.test.labels)).float().mean().item()
    assert accuracy > 3 / task.labels.num_classes


@pytest.mark.skipif(not SHIPPED_MAE, reason="the world MAE has not been trained into the package yet")
def test_shipped_mae_through_the_adapter():
    from vlprompt.backbones.registry import create_backbone

    backbone = create_backbone("world:mae")
    assert backbone.kind == "mae" and backbone.visual.pooling == "mean" and backbone.text is None
    assert (MAE_DIR / MAE_WEIGHTS_FILE).stat().st_size < 3_000_000
    with torch.no_grad():
        features = backbone.visual(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, backbone.visual.feature_dim) and torch.isfinite(features).all()
