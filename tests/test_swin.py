"""Swin: the adapter equals timm's own forward, and VPT on it equals the official prompted Swin re-derived by hand.

The reference below follows KMnP/vpt ``vit_prompt/swin_transformer.py`` step by step on the tiny model's weights
(prompts prepended to every window with zero relative-position bias and zero shift mask, their window outputs
averaged, four copies of each prompt through patch merging, norm + mean over all tokens). With batch size 1 the
official window/prompt pairing and ours coincide, so the values must match.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vlprompt.methods.vpt  # noqa: F401
from vlprompt.backbones.registry import create_backbone
from vlprompt.backbones.tiny import tiny_timm_swin
from vlprompt.core.errors import VlpromptError
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import create_method
from vlprompt.prompts.adapters import ScaleShift
from vlprompt.prompts.visual import VisualPrompts, prompted_forward

LABELS = LabelSpace(["a", "b", "c"])


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _official_block(block: nn.Module, x: torch.Tensor, p: int) -> torch.Tensor:
    """PromptedSwinTransformerBlock.forward + PromptedWindowAttention.forward, batch size 1."""
    height, width = block.input_resolution
    wh, ww = block.window_size
    shift = block.shift_size
    channels = x.shape[-1]
    attn = block.attn
    shortcut = x
    x = block.norm1(x)
    prompt, grid = x[:, :p], x[:, p:].reshape(1, height, width, channels)
    if any(shift):
        grid = torch.roll(grid, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = grid.view(1, height // wh, wh, width // ww, ww, channels).permute(0, 1, 3, 2, 4, 5)
    windows = windows.reshape(-1, wh * ww, channels)
    num_windows = windows.shape[0]
    prompt = prompt.unsqueeze(0).expand(num_windows, -1, -1, -1).reshape(-1, p, channels)
    seq = torch.cat([prompt, windows], dim=1)
    rows, length, _ = seq.shape
    heads = attn.num_heads
    qkv = nn.functional.linear(seq, attn.qkv.weight, attn.qkv.bias).reshape(rows, length, 3, heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    area = wh * ww
    bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(area, area, -1)
    bias = bias.permute(2, 0, 1)
    bias = torch.cat([torch.zeros(heads, p, area), bias], dim=1)
    bias = torch.cat([torch.zeros(heads, area + p, p), bias], dim=-1)
    scores = (q * attn.scale) @ k.transpose(-2, -1) + bias.unsqueeze(0)
    if block.attn_mask is not None:
        mask = block.attn_mask
        mask = torch.cat([torch.zeros(num_windows, p, area), mask], dim=1)
        mask = torch.cat([torch.zeros(num_windows, area + p, p), mask], dim=-1)
        scores = scores + mask.unsqueeze(1)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(rows, length, -1)
    out = nn.functional.linear(out, attn.proj.weight, attn.proj.bias)
    prompt_out = out[:, :p].view(-1, 1, p, channels).mean(0)
    grid = out[:, p:].reshape(1, height // wh, width // ww, wh, ww, channels).permute(0, 1, 3, 2, 4, 5)
    grid = grid.reshape(1, height, width, channels)
    if any(shift):
        grid = torch.roll(grid, shifts=shift, dims=(1, 2))
    x = shortcut + torch.cat([prompt_out, grid.reshape(1, height * width, channels)], dim=1)
    return x + block.mlp(block.norm2(x))


def _official_merge(stage: nn.Module, x: torch.Tensor, p: int) -> torch.Tensor:
    """PromptedPatchMerging: prompts as four copies (C -> 4C), patches by the 2x2 merge, then norm + reduction."""
    merge = stage.downsample
    height, width = stage.input_resolution
    prompt = torch.cat([x[:, :p]] * 4, dim=-1)
    grid = x[:, p:].reshape(1, height, width, -1)
    grid = grid.reshape(1, height // 2, 2, width // 2, 2, -1).permute(0, 1, 3, 4, 2, 5).flatten(3)  # timm's order
    merged = torch.cat([prompt, grid.flatten(1, 2)], dim=1)
    return merge.reduction(merge.norm(merged))


def official_prompted_swin(model: nn.Module, image: torch.Tensor, sets: list[torch.Tensor]) -> torch.Tensor:
    """Features of one image; ``sets[0]`` the input prompts, ``sets[i]`` block i's deep prompts (if given)."""
    p = sets[0].shape[0]
    x = torch.cat([sets[0].unsqueeze(0), model.patch_embed(image).flatten(1, 2)], dim=1)
    index = 0
    for s, stage in enumerate(model.layers):
        if s > 0:
            x = _official_merge(stage, x, p)
        for block in stage.blocks:
            if index > 0 and len(sets) > 1:
                x = torch.cat([sets[index].unsqueeze(0), x[:, p:]], dim=1)
            x = _official_block(block, x, p)
            index += 1
    return model.norm(x).mean(dim=1)


def test_swin_adapter_equals_timm_forward():
    backbone = tiny_timm_swin(seed=1)
    model, images = backbone.extra["model"], _images()
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(images), pre_logits=True)
        torch.testing.assert_close(backbone.visual(images), expected, rtol=0, atol=0)
        empty = VisualPrompts(0, backbone.visual.width)
        torch.testing.assert_close(prompted_forward(backbone.visual, empty, images), expected, rtol=0, atol=0)
    assert backbone.visual.num_blocks == 6 and backbone.visual.prompt_support().kind == "windows"


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep"])
def test_swin_vpt_equals_official_prompted_swin(name):
    backbone = tiny_timm_swin(seed=2)
    method = create_method(name, backbone, LABELS, num_tokens=3).eval()
    prompts = method.prompts
    sets = [prompts.raw(i).detach() for i in range(prompts.depth)]
    images = _images(2, seed=3)
    with torch.no_grad():
        for row in range(2):
            expected = official_prompted_swin(backbone.extra["model"], images[row : row + 1], sets)
            torch.testing.assert_close(method.encode(images[row : row + 1]), expected, rtol=1e-5, atol=1e-5)


def test_swin_prompts_per_stage_as_official():
    """Official deep Swin: depths[0]-1 deep sets + the input set at width C, depths[s] sets at width C*2^s."""
    backbone = tiny_timm_swin()
    deep = create_method("vpt-deep", backbone, LABELS, num_tokens=4)
    shapes = [tuple(t.shape) for t in deep.prompts.stage_tokens]
    assert shapes == [(2, 4, 16), (2, 4, 32), (2, 4, 64)]
    shallow = create_method("vpt-shallow", backbone, LABELS, num_tokens=4)
    assert tuple(shallow.prompts.tokens.shape) == (1, 4, 16)
    # official bound: sqrt(6 / (3 * patch^2 + embed_dim)) with patch 2 and the first stage's width
    assert deep.prompts.init_bound == pytest.approx((6 / (3 * 4 + 16)) ** 0.5)
    assert deep.prompts.dropout.p == 0.1 and shallow.prompts.dropout.p == 0.0


def test_swin_prompted_batch_equals_samples_alone():
    """Each sample's prompts meet only its own windows (where the official pairing mixes samples)."""
    backbone = tiny_timm_swin(seed=4)
    method = create_method("vpt-shallow", backbone, LABELS, num_tokens=2).eval()
    images = _images(3, seed=5)
    with torch.no_grad():
        together = method.encode(images)
        alone = torch.cat([method.encode(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_swin_training_moves_every_stage_and_no_backbone_weight():
    backbone = create_backbone("tiny:timm_swin")
    method = create_method("vpt-deep", backbone, LABELS, num_tokens=2).train()
    out = method({"image": _images(2), "label": torch.tensor([0, 2])})
    out["loss"].backward()
    assert all(store.grad.abs().sum() > 0 for store in method.prompts.stage_tokens)
    assert all(p.grad is None for p in backbone.visual.parameters())
    assert not backbone.visual.training
    names = set(method.trainable_state_dict())
    assert names == {"prompts.stage_tokens.0", "prompts.stage_tokens.1", "prompts.stage_tokens.2", "head.weight",
                     "head.bias"}


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"location": "add"}, "position-embedding table"),
        ({"location": "below"}, "never defines"),
        ({"location": "pad"}, "window"),
        ({"location": "prepend-pixel"}, "pixel prompts only for ViTs"),
        ({"readout": "img_pool"}, "ViT models"),
    ],
)
def test_swin_refuses_what_the_official_swin_cannot_do(options, reason):
    with pytest.raises(VlpromptError, match=reason):
        create_method("vpt-shallow", tiny_timm_swin(), LABELS, **options)


def test_swin_refuses_partial_depth_projection_and_spt():
    backbone = tiny_timm_swin()
    with pytest.raises(VlpromptError, match="no\\s+partial"):
        create_method("vpt-deep", backbone, LABELS, num_deep_layers=2)
    with pytest.raises(VlpromptError, match="never calls it"):
        create_method("vpt-shallow", backbone, LABELS, projection_dim=8)
    with pytest.raises(VlpromptError, match="deep prompts at location 'add-1'"):
        create_method("vpt-deep", backbone, LABELS, location="add-1")
    with pytest.raises(VlpromptError, match="Swin stages or ConvNet pixels"):
        create_method("spt-shallow", backbone, LABELS)


def test_swin_add1_adds_one_prompt_to_every_patch_token():
    backbone = tiny_timm_swin(seed=6)
    method = create_method("vpt-shallow", backbone, LABELS, location="add-1").eval()
    model, images = backbone.extra["model"], _images(2)
    prompt = method.prompts.raw(0)
    with torch.no_grad():
        tokens = model.patch_embed(images) + prompt  # [B, H, W, C] + [1, C]
        expected = model.forward_head(model.norm(model.layers(tokens)), pre_logits=True)
        torch.testing.assert_close(method.encode(images), expected, rtol=1e-5, atol=1e-5)


def test_swin_block_sites_reach_the_prompted_pass():
    """A wrapper placed at a block site runs in the prompted pass (the vpt-peft methods' seam)."""
    backbone = tiny_timm_swin()
    visual = backbone.visual
    calls = []

    class Spy(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(x.shape))
            return self.inner(x)

    sites = visual.block_sites(3)
    assert sites.get("attn_qkv") is visual.block_modules()[3].attn.qkv
    assert not sites.has("attn")
    sites.replace("attn_qkv", Spy(sites.get("attn_qkv")))
    sites.replace("mlp_out", Spy(sites.get("mlp_out")))
    method = create_method("vpt-shallow", backbone, LABELS, num_tokens=2).eval()
    with torch.no_grad():
        method.encode(_images(1))
    # stage 1 (8x8 grid, window 4): 4 windows of 2 prompts + 16 patches; fc2 sees 2 + 64 tokens at hidden width 64
    assert calls == [(4, 18, 32), (1, 66, 64)]


def test_nmi_per_block_on_swin_prompts():
    from vlprompt.analysis.nmi import method_nmi, normalized_mutual_information

    backbone = tiny_timm_swin(seed=7)
    method = create_method("vpt-deep", backbone, LABELS, num_tokens=2)
    images = _images(2)
    values = method_nmi(method, images)
    assert len(values) == 6
    # block 0 sees the input prompts beside the patch embedding
    with torch.no_grad():
        patches = backbone.visual.embed(images)
        prompts = method.prompts.raw(0).unsqueeze(0).expand(2, -1, -1)
        expected = float(normalized_mutual_information(prompts, patches).mean())
    assert values[0] == pytest.approx(expected, rel=1e-9)


def test_swin_tower_sites_carry_ssf_and_layernorm_tuning():
    """Swin's tower sites are timm's own patch projection and final norm (no class token), so SSF (at every stage's
    width) and LayerNorm tuning attach; SSF at its identity start equals the frozen tower, and merging keeps it."""
    backbone = tiny_timm_swin(seed=7)
    sites = backbone.visual.tower_sites()
    assert sites.get("patch_proj") is backbone.visual.model.patch_embed.proj
    assert sites.get("norm_final") is backbone.visual.model.norm
    assert not sites.has("class_token")
    images = _images(2, seed=7)
    with torch.no_grad():
        reference = backbone.visual(images)
    ssf = create_method("ssf", backbone, LABELS)
    with torch.no_grad():
        for module in ssf.visual.modules():
            if isinstance(module, ScaleShift):
                module.scale.fill_(1.0)
                module.shift.zero_()
        torch.testing.assert_close(ssf.visual(images), reference)
        for module in ssf.visual.modules():
            if isinstance(module, ScaleShift):
                module.scale.normal_(1.0, 0.1)
                module.shift.normal_(0.0, 0.1)
        torch.testing.assert_close(ssf.merged_tower()(images), ssf.visual(images), atol=1e-5, rtol=1e-5)
    assert ssf({"image": images, "label": torch.tensor([0, 1])})["logits"].shape == (2, 3)
    ln = create_method("ln-tune", backbone, LABELS)
    trainable = [name for name, p in ln.named_parameters() if p.requires_grad and not name.startswith("head")]
    assert any("layers.2" in name for name in trainable) and all("norm" in name for name in trainable)
    with pytest.raises(VlpromptError, match="class_token"):
        create_method("cls-tune", backbone, LABELS)
