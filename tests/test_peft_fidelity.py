"""Fidelity of the parameter-efficient methods to their official definitions, on tiny random weights.

Each test recomputes the official module structure by hand from the timm ViT's own tensors (attention from the
packed qkv weights, the MLP from fc1 / fc2) with the method's trained tensors put where the official code puts
them, and compares with the method's forward: Pfeiffer adapter (KMnP/vpt ``vit_adapter``), AdaptFormer
(ShoufaChen/AdaptFormer ``custom_modules.Block``), SSF (dongzelian/SSF ``vision_transformer.py``), LoRA on the packed
qkv, BitFit / LayerNorm / CLS-token tuning. Zero-initialised branches must give the frozen forward exactly.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from vlprompt.backbones.tiny import tiny_open_clip, tiny_timm_vit
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import create_method
from vlprompt.prompts.adapters import ScaleShift

LABELS = LabelSpace(["a", "b", "c"], ["a photo of a {}."], {})
IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _method(name, backbone=None, **options):
    torch.manual_seed(0)
    return create_method(name, backbone or tiny_timm_vit(), LABELS, **options).eval()


def _randomize(*tensors):
    with torch.no_grad():
        for tensor in tensors:
            tensor.copy_(torch.randn_like(tensor) * 0.1)


def _ss(x, wrapper, axis=-1):
    """SSF's official ssf_ada: x * scale + shift on the feature axis."""
    shape = [1] * x.dim()
    shape[axis] = -1
    return x * wrapper.scale.view(shape) + wrapper.shift.view(shape)


def _attention(block, x, qkv_delta=None, ssf=None):
    """timm's Attention by hand: packed qkv, heads, softmax(q k^T / sqrt(hd)) v, proj."""
    attn = block.attn
    base_qkv = attn.qkv.base if ssf else attn.qkv
    base_proj = attn.proj.base if ssf else attn.proj
    weight = base_qkv.weight if qkv_delta is None else base_qkv.weight + qkv_delta
    qkv = F.linear(x, weight, base_qkv.bias)
    if ssf:
        qkv = _ss(qkv, attn.qkv)
    b, n, c = x.shape
    heads = attn.num_heads
    q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    out = ((q @ k.transpose(-2, -1)) / math.sqrt(c // heads)).softmax(-1) @ v
    out = F.linear(out.transpose(1, 2).reshape(b, n, c), base_proj.weight, base_proj.bias)
    return _ss(out, attn.proj) if ssf else out


def _mlp(fc1, fc2, x):
    return F.linear(F.gelu(F.linear(x, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)


def _tokens(model, images):
    patches = model.patch_embed.proj(images).flatten(2).transpose(1, 2)
    return torch.cat([model.cls_token.expand(len(images), -1, -1), patches], 1) + model.pos_embed


def _frozen(backbone):
    with torch.no_grad():
        return backbone.visual(IMAGES)


def test_pfeiffer_adapter_is_the_official_block_and_starts_as_the_frozen_model():
    backbone = tiny_timm_vit()
    method = _method("adapter", backbone)
    torch.testing.assert_close(method.encode(IMAGES), _frozen(backbone), rtol=0, atol=0)
    model = method.visual.model
    adapters = [block.mlp for block in model.blocks]
    assert [a.down.out_features for a in adapters] == [32 // 8] * 2  # reduction factor 8
    assert all(float(t.detach().abs().sum()) == 0 for a in adapters for t in (a.down.weight, a.down.bias, a.up.weight, a.up.bias))
    # The official zero init leaves a gradient on up.bias only (GELU(0) = 0 feeds up, up.weight = 0 feeds down).
    method.train()
    method({"image": IMAGES, "label": torch.tensor([0, 1, 2])})["loss"].backward()
    assert float(adapters[0].up.bias.grad.abs().sum()) > 0
    assert [float(t.grad.abs().sum()) for t in (adapters[0].down.weight, adapters[0].down.bias, adapters[0].up.weight)] == [0, 0, 0]
    method.eval()
    for a in adapters:
        _randomize(a.down.weight, a.down.bias, a.up.weight, a.up.bias)
    x = _tokens(backbone.visual.model, IMAGES)
    for block, adapter in zip(model.blocks, adapters):
        x = x + _attention(block, block.norm1(x))
        h = x
        y = _mlp(adapter.mlp.fc1, adapter.mlp.fc2, block.norm2(x))
        y = F.linear(F.gelu(F.linear(y, adapter.down.weight, adapter.down.bias)), adapter.up.weight, adapter.up.bias) + y
        x = y + h
    expected = model.norm(x)[:, 0]
    torch.testing.assert_close(method.encode(IMAGES), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("branch_input", ["residual", "normed"])
def test_adaptformer_is_the_official_parallel_branch(branch_input):
    backbone = tiny_timm_vit()
    method = _method("adaptformer", backbone, bottleneck=8, branch_input=branch_input)
    torch.testing.assert_close(method.encode(IMAGES), _frozen(backbone), rtol=0, atol=0)  # up starts at zero
    model = method.visual.model
    wrapped = [block.mlp for block in model.blocks]
    for w in wrapped:  # official init: kaiming-uniform(a=sqrt 5) down (bound 1/sqrt(d)), zero biases and up
        assert float(w.down.weight.detach().abs().max()) <= 1 / math.sqrt(32)
        assert float(w.down.bias.detach().abs().sum()) == 0 and float(w.up.weight.detach().abs().sum()) == 0
        _randomize(w.up.weight, w.up.bias, w.down.bias)
    x = _tokens(backbone.visual.model, IMAGES)
    for block, w in zip(model.blocks, wrapped):
        x = x + _attention(block, block.norm1(x))  # the block's norm2 place now holds an identity
        source = x if branch_input == "residual" else w.norm(x)
        branch = F.linear(F.relu(F.linear(source, w.down.weight, w.down.bias)), w.up.weight, w.up.bias) * 0.1
        x = x + _mlp(w.mlp.fc1, w.mlp.fc2, w.norm(x)) + branch
    torch.testing.assert_close(method.encode(IMAGES), model.norm(x)[:, 0], rtol=1e-5, atol=1e-5)


def test_ssf_is_the_official_scale_shift_everywhere_and_merges_exactly():
    backbone = tiny_timm_vit()
    method = _method("ssf", backbone)
    model = method.visual.model
    wrappers = [m for m in model.modules() if isinstance(m, ScaleShift)]
    assert len(wrappers) == 2 + 6 * 2  # patch projection + final norm + 6 per block (norm1 qkv proj norm2 fc1 fc2)
    x = _ss(model.patch_embed.proj.base(IMAGES), model.patch_embed.proj, axis=1).flatten(2).transpose(1, 2)
    x = torch.cat([model.cls_token.expand(len(IMAGES), -1, -1), x], 1) + model.pos_embed
    for block in model.blocks:
        x = x + _attention(block, _ss(block.norm1.base(x), block.norm1), ssf=True)
        hidden = _ss(block.mlp.fc1.base(_ss(block.norm2.base(x), block.norm2)), block.mlp.fc1)
        x = x + _ss(block.mlp.fc2.base(F.gelu(hidden)), block.mlp.fc2)
    expected = _ss(model.norm.base(x), model.norm)[:, 0]
    torch.testing.assert_close(method.encode(IMAGES), expected, rtol=1e-5, atol=1e-5)
    merged = method.merged_tower()
    assert not any(isinstance(m, ScaleShift) for m in merged.modules())
    assert type(merged.model.blocks[0].attn.qkv) is torch.nn.Linear
    torch.testing.assert_close(merged(IMAGES), method.encode(IMAGES), rtol=1e-5, atol=1e-5)


def test_ssf_on_a_fused_attention_tower_merges_exactly():
    method = _method("ssf", tiny_open_clip())
    merged = method.merged_tower()
    assert not any(isinstance(m, ScaleShift) for m in merged.modules())
    torch.testing.assert_close(merged(IMAGES), method.encode(IMAGES), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # with scale 1 and shift 0 it is the frozen tower
        for m in method.visual.modules():
            if isinstance(m, ScaleShift):
                m.scale.fill_(1.0)
                m.shift.zero_()
    torch.testing.assert_close(method.encode(IMAGES), _frozen(method.backbone), rtol=1e-6, atol=1e-6)


def test_lora_adds_low_rank_deltas_to_the_q_and_v_slices_of_the_packed_qkv():
    backbone = tiny_timm_vit()
    method = _method("lora", backbone, rank=2, alpha=4.0)
    torch.testing.assert_close(method.encode(IMAGES), _frozen(backbone), rtol=0, atol=0)  # B starts at zero
    reference = copy.deepcopy(backbone.visual)
    with torch.no_grad():
        for block, ref in zip(method.visual.model.blocks, reference.model.blocks):
            wrapper = block.attn.qkv
            assert sorted(wrapper.deltas) == ["q", "v"]
            _randomize(wrapper.deltas["q"].lora_B, wrapper.deltas["v"].lora_B)
            d = 32
            for slot, name in ((0, "q"), (2, "v")):  # scaling alpha / r = 2, the LoRA paper's
                delta = wrapper.deltas[name]
                ref.attn.qkv.weight[slot * d:(slot + 1) * d] += 2.0 * delta.lora_B @ delta.lora_A
    torch.testing.assert_close(method.encode(IMAGES), reference(IMAGES), rtol=1e-5, atol=1e-5)
    unmerged = method.encode(IMAGES)
    method.set_merged(True)
    torch.testing.assert_close(method.encode(IMAGES), unmerged, rtol=1e-5, atol=1e-5)


def test_lora_on_open_clip_uses_the_fused_attention_seam():
    method = _method("lora", tiny_open_clip(), params=["q", "k", "v", "o"])
    torch.testing.assert_close(method.encode(IMAGES), _frozen(method.backbone), rtol=1e-5, atol=1e-5)
    assert sorted(method.wrappers[0].deltas) == ["k", "o", "q", "v"]


def test_bitfit_trains_exactly_the_biases_the_official_name_rule_selects():
    backbone = tiny_timm_vit()
    method = _method("bias", backbone)
    official = {n for n, _ in backbone.visual.named_parameters() if "bias" in n}  # KMnP/vpt tinytl-bias on this ViT
    tuned = {n.removeprefix("visual.") for n, p in method.named_parameters() if p.requires_grad and n.startswith("visual.")}
    assert tuned == official
    reference = copy.deepcopy(backbone.visual)
    with torch.no_grad():
        for (name, p), (_, r) in zip(method.visual.named_parameters(), reference.named_parameters()):
            if p.requires_grad:
                p.add_(0.3)
                r.add_(0.3)
    torch.testing.assert_close(method.encode(IMAGES), reference(IMAGES), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_frozen(backbone), tiny_timm_vit().visual(IMAGES).detach(), rtol=0, atol=0)


def test_bitfit_on_open_clip_includes_the_attention_in_projection_bias():
    backbone = tiny_open_clip()
    method = _method("bias", backbone)
    tuned = {n for n, p in method.visual.named_parameters() if p.requires_grad}
    official = {n for n, _ in backbone.visual.named_parameters() if "bias" in n}
    assert tuned == official and any(n.endswith("attn.in_proj_bias") for n in tuned)


def test_layernorm_and_class_token_tuning_train_exactly_their_tensors():
    backbone = tiny_timm_vit()
    ln = _method("ln-tune", backbone)
    tuned = {n for n, p in ln.visual.named_parameters() if p.requires_grad}
    assert tuned == {f"{m}.{t}" for m, mod in ln.visual.named_modules() if isinstance(mod, torch.nn.LayerNorm)
                     for t in ("weight", "bias")}
    cls = _method("cls-tune", backbone)
    assert [n for n, p in cls.visual.named_parameters() if p.requires_grad] == ["model.cls_token"]
    reference = copy.deepcopy(backbone.visual)
    with torch.no_grad():
        cls.visual.model.cls_token.add_(0.5)
        reference.model.cls_token.add_(0.5)
    torch.testing.assert_close(cls.encode(IMAGES), reference(IMAGES), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["bias", "ln-tune", "cls-tune", "adapter", "adaptformer", "ssf", "lora"])
def test_the_callers_backbone_is_untouched_and_its_frozen_tensors_shared(name):
    backbone = tiny_timm_vit()
    before = {k: v.clone() for k, v in backbone.visual.state_dict().items()}
    method = _method(name, backbone)
    method.train()
    loss = method({"image": IMAGES, "label": torch.tensor([0, 1, 2])})["loss"]
    loss.backward()
    torch.optim.SGD(method.trainable_parameters(), lr=1.0).step()
    for key, value in backbone.visual.state_dict().items():
        assert torch.equal(value, before[key]), key
    shared = {p.data_ptr() for p in backbone.visual.parameters()}
    frozen = [p for p in method.visual.parameters() if not p.requires_grad]
    assert frozen and all(p.data_ptr() in shared for p in frozen)
    assert not backbone.visual.training and not any(p.requires_grad for p in backbone.visual.parameters())
