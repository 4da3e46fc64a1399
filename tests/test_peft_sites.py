"""The parameter-efficient seam: each adapter's block / tower sites are exactly the library's own modules.

Checked against the module trees of timm's VisionTransformer and open_clip's image tower, and through the shipped
world backbones (world:mae is a timm ViT, world:clip an open_clip CLIP), so a changed library layout fails here.
"""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from vlprompt.backbones.base import BLOCK_SITES, TOWER_SITES, BlockSites
from vlprompt.backbones.registry import create_backbone
from vlprompt.backbones.timm_vit import wrap_timm_vit
from vlprompt.backbones.tiny import tiny_open_clip, tiny_timm_vit
from vlprompt.core.errors import VlpromptError


def _check_timm(tower) -> None:
    model = tower.model
    for index, block in enumerate(model.blocks):
        sites = tower.block_sites(index)
        expected = {
            "norm_attn": block.norm1, "attn": block.attn, "attn_qkv": block.attn.qkv, "attn_out": block.attn.proj,
            "norm_mlp": block.norm2, "mlp": block.mlp, "mlp_in": block.mlp.fc1, "mlp_out": block.mlp.fc2,
        }
        assert set(sites.places) == set(BLOCK_SITES)
        for site, module in expected.items():
            assert sites.get(site) is module, site
        assert sites.get("attn_qkv").out_features == 3 * tower.width  # packed [q; k; v]
    tower_sites = tower.tower_sites()
    assert tower_sites.get("patch_proj") is model.patch_embed.proj
    assert tower_sites.get("class_token") is model.cls_token
    assert tower_sites.get("norm_final") is model.norm


def _check_open_clip(tower) -> None:
    visual = tower.visual
    for index, block in enumerate(visual.transformer.resblocks):
        sites = tower.block_sites(index)
        assert set(sites.places) == {"norm_attn", "attn", "norm_mlp", "mlp", "mlp_in", "mlp_out"}  # fused attention
        for site, module in {"norm_attn": block.ln_1, "attn": block.attn, "norm_mlp": block.ln_2, "mlp": block.mlp,
                             "mlp_in": block.mlp.c_fc, "mlp_out": block.mlp.c_proj}.items():
            assert sites.get(site) is module, site
        with pytest.raises(VlpromptError, match="has no 'attn_qkv' place"):
            sites.get("attn_qkv")
    tower_sites = tower.tower_sites()
    assert set(tower_sites.places) == set(TOWER_SITES)
    assert tower_sites.get("patch_proj") is visual.conv1
    assert tower_sites.get("class_token") is visual.class_embedding
    assert tower_sites.get("norm_final") is visual.ln_post


@pytest.mark.parametrize("kind", ["vit", "mae"])
def test_timm_vit_sites_are_timms_own_modules(kind):
    _check_timm(tiny_timm_vit(kind).visual)


def test_open_clip_sites_are_open_clips_own_modules():
    _check_open_clip(tiny_open_clip().visual)


def test_world_backbones_expose_the_same_sites():
    _check_timm(create_backbone("world:mae").visual)
    _check_open_clip(create_backbone("world:clip").visual)


def test_replace_swaps_the_module_the_block_calls():
    backbone = tiny_timm_vit()
    tower = backbone.visual
    tokens = tower.embed(torch.randn(2, 3, 32, 32))
    before = tower.block(0, tokens)
    sites = tower.block_sites(0)
    calls = []

    class Spy(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(x.shape)
            return self.inner(x)

    sites.replace("mlp_in", Spy(sites.get("mlp_in")))
    torch.testing.assert_close(tower.block(0, tokens), before)
    assert calls == [torch.Size([2, 17, 32])]  # fc1 sees [B, CLS + 16 patches, width 32]
    assert isinstance(tower.model.blocks[0].mlp.fc1, Spy)


def test_unknown_sites_and_other_block_layouts_are_refused():
    with pytest.raises(ValueError, match="unknown sites \\['ffn'\\]"):
        BlockSites({"ffn": (nn.Linear(2, 2), "weight")})
    with pytest.raises(ValueError, match="unknown sites \\['mlp'\\]"):
        BlockSites({"mlp": (nn.Linear(2, 2), "weight")}, known=TOWER_SITES)
    from timm.models.vision_transformer import ResPostBlock

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                              embed_dim=32, depth=1, num_heads=2, block_fn=ResPostBlock)
    tower = wrap_timm_vit(model.eval(), "tiny:respost").visual
    with pytest.raises(VlpromptError, match="ResPostBlock, not timm's pre-norm Block"):
        tower.block_sites(0)


def test_towers_without_a_seam_say_so():
    from vlprompt.backbones.tiny import tiny_hf_clip

    try:
        tower = tiny_hf_clip().visual
    except VlpromptError:
        pytest.skip("transformers is not installed")
    with pytest.raises(VlpromptError, match="does not expose named block places"):
        tower.block_sites(0)
