"""Official MAE and MoCo v3 checkpoint files load into timm ViTs by name, through key mapping only.

Each file is written here in the official layout (torch.save of plain tensor dicts, as the official scripts save
them) from a tiny random ViT's weights, then loaded with ``timm:vit_tiny_patch16_224`` at the same tiny size.
"""

from __future__ import annotations

import pytest
import timm
import torch

from vlprompt.backbones.registry import create_backbone
from vlprompt.core.errors import VlpromptError

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def _source(seed: int = 0, **options) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY, **options)
    return {key: value.clone() for key, value in model.state_dict().items()}


def _load(path, **options):
    return create_backbone("timm:vit_tiny_patch16_224", weights=path, **TINY, **options)


def _assert_loaded(backbone, source, skip=()):
    loaded = backbone.extra["model"].state_dict()
    for key, value in source.items():
        if not key.startswith(skip):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_mae_file_loads_with_the_vpt_mae_readout(tmp_path):
    source = _source(1)
    checkpoint = {
        "model": {
            **source,
            "mask_token": torch.zeros(1, 1, 32),
            "decoder_embed.weight": torch.zeros(16, 32),
            "decoder_pred.bias": torch.zeros(8),
        },
        "epoch": 799,
    }
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save(checkpoint, path)
    for options in ({"checkpoint_format": "mae"}, {"kind": "mae", "global_pool": "avg"}):  # named, then detected
        backbone = _load(path, **options)
        model = backbone.extra["model"]
        _assert_loaded(backbone, source, skip=("norm.",))
        assert isinstance(model.norm, torch.nn.Identity)  # VPT's MAE readout: no final norm ...
        torch.testing.assert_close(model.fc_norm.weight, torch.ones(32))  # ... a fresh fc_norm
        assert backbone.kind == "mae" and backbone.visual.pooling == "mean"


def test_mae_file_into_a_cls_readout_keeps_its_norm(tmp_path):
    source = _source(2)
    path = tmp_path / "mae.pth"
    torch.save({"model": source}, path)
    backbone = _load(path, checkpoint_format="mae", global_pool="token", kind="vit")
    _assert_loaded(backbone, source)


@pytest.mark.parametrize("prefix", ["module.base_encoder.", "module."])
def test_moco_v3_file_loads_the_base_encoder(tmp_path, prefix):
    source = _source(3)
    state = {prefix + key: value for key, value in source.items()}
    state[prefix + "head.0.weight"] = torch.zeros(64, 32)  # projection MLP: dropped
    if prefix == "module.base_encoder.":
        state.update({"module.momentum_encoder." + k: v + 1 for k, v in source.items()})
        state["module.predictor.0.weight"] = torch.zeros(64, 64)
    path = tmp_path / "vit-tiny-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_tiny", "state_dict": state, "optimizer": {"lr": torch.tensor(1.0)}}, path)
    for options in ({"checkpoint_format": "moco_v3"}, {}):
        backbone = _load(path, **options)
        _assert_loaded(backbone, source)
        assert backbone.visual.pooling == "cls"


def test_unknown_layout_names_the_keys_it_found(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"teacher": {"w": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(VlpromptError, match="top-level keys teacher, epoch"):
        _load(path)


def test_format_and_file_must_agree(tmp_path):
    path = tmp_path / "mae.pth"
    torch.save({"model": _source()}, path)
    with pytest.raises(VlpromptError, match="looks like a mae checkpoint"):
        _load(path, checkpoint_format="moco_v3")
    with pytest.raises(VlpromptError, match="not known"):
        _load(path, checkpoint_format="dino")
    with pytest.raises(VlpromptError, match="pass weights=PATH"):
        create_backbone("timm:vit_tiny_patch16_224", checkpoint_format="mae", **TINY)


def test_wrong_size_names_missing_keys(tmp_path):
    source = _source()
    del source["blocks.1.mlp.fc2.weight"]
    path = tmp_path / "mae.pth"
    torch.save({"model": source}, path)
    with pytest.raises(VlpromptError, match="missing blocks.1.mlp.fc2.weight"):
        _load(path, checkpoint_format="mae")


class NotATensor:
    pass


def test_files_are_never_fully_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"cls_token": torch.zeros(1)}, "extra": NotATensor()}, path)
    with pytest.raises(VlpromptError, match="weights_only=True"):
        _load(path, checkpoint_format="mae")


def test_timm_training_checkpoints_still_go_to_timms_loader(tmp_path):
    source = _source(4)
    path = tmp_path / "checkpoint-10.pth.tar"
    torch.save({"epoch": 10, "arch": "vit_tiny_patch16_224", "state_dict": source}, path)
    _assert_loaded(_load(path), source)
