"""``timm:`` names dispatch to the adapter of the model's class: ViT, Swin, ResNet, ConvNeXt; others are refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vlprompt.backbones.convnet import ConvNetVisionTower
from vlprompt.backbones.registry import create_backbone, list_backbones
from vlprompt.backbones.swin import SwinVisionTower
from vlprompt.backbones.timm_vit import TimmVisionTower
from vlprompt.core.errors import VlpromptError

SWIN = {"img_size": 32, "patch_size": 2, "window_size": 4, "embed_dim": 16, "depths": (2, 2, 2), "num_heads": (2, 2, 4)}
SMALL = {
    "timm:vit_tiny_patch16_224": ({"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
                                  TimmVisionTower),
    "timm:swin_tiny_patch4_window7_224": (SWIN, SwinVisionTower),
    "timm:resnet18": ({"layers": (1, 1, 1, 1), "channels": (8, 16, 32, 64)}, ConvNetVisionTower),
    "timm:convnext_atto": ({"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)}, ConvNetVisionTower),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_timm_names_get_their_family_adapter(name):
    options, tower = SMALL[name]
    backbone = create_backbone(name, pretrained=False, **options)
    assert type(backbone.visual) is tower
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = backbone.extra["model"]
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(images), pre_logits=True)
        torch.testing.assert_close(backbone.visual(images), expected, rtol=1e-6, atol=1e-6)


def test_swin_weights_file_loads_through_timm(tmp_path):
    source = create_backbone("timm:swin_tiny_patch4_window7_224", pretrained=False, **SWIN).extra["model"]
    path = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = create_backbone("timm:swin_tiny_patch4_window7_224", weights=path, **SWIN).extra["model"]
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_other_timm_families_are_refused_with_the_supported_list():
    with pytest.raises(VlpromptError, match="Swin Transformers"):
        create_backbone("timm:mobilenetv3_small_050", pretrained=False)
    with pytest.raises(VlpromptError, match="applies to ViTs only"):
        create_backbone("timm:resnet18", pretrained=False, kind="mae", layers=(1, 1, 1, 1))


def test_tiny_names_of_the_new_families_are_registered():
    names = list_backbones()
    assert {"tiny:timm_swin", "tiny:timm_resnet", "tiny:timm_convnext"} <= set(names)
    assert create_backbone("tiny:timm_swin").weights_hash() == create_backbone("tiny:timm_swin").weights_hash()
