"""VPT ``below`` (extra input channels through a retrained input convolution) against the official definitions.

ViT (KMnP/vpt ``vit_ablations.py``): a Conv2d(3 + k) whose first three channels hold the pretrained patch
embedding, the rest and the prompt map uniform(-v, v); conv, bias and map train. ResNet (``resnet.py``): conv1 with
3 + k channels (Xavier-uniform, pretrained weights in the first three), a map uniform(0, 1) normalised by the mean
of ImageNet's means / stds, and conv1 + bn1 retrained with bn1 in training mode.
"""

from __future__ import annotations

import torch
from torch import nn

import vlprompt.methods.vpt  # noqa: F401
from vlprompt.artifacts.checkpoint import load_prompts, save_prompts
from vlprompt.backbones.tiny import tiny_timm_convnet, tiny_timm_vit
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import create_method
from vlprompt.prompts.below import xavier_bound
from vlprompt.prompts.visual import vpt_uniform_bound

LABELS = LabelSpace(["a", "b"])


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_vit_below_equals_the_official_four_channel_patch_embedding():
    backbone = tiny_timm_vit("vit", seed=1)
    model = backbone.extra["model"]
    method = create_method("vpt-shallow", backbone, LABELS, location="below", num_tokens=2).eval()
    below = method.below
    bound = vpt_uniform_bound(8, 32)
    torch.testing.assert_close(below.weight[:, :3].detach(), model.patch_embed.proj.weight)
    torch.testing.assert_close(below.bias.detach(), model.patch_embed.proj.bias)
    assert float(below.weight[:, 3:].detach().abs().max()) <= bound
    assert float(below.map.detach().abs().max()) <= bound and tuple(below.map.shape) == (1, 2, 32, 32)
    images = _images()
    with torch.no_grad():
        stacked = torch.cat([images, below.map.detach().expand(2, -1, -1, -1)], dim=1)
        patches = nn.functional.conv2d(stacked, below.weight, below.bias, stride=8)
        tokens = model._pos_embed(patches.flatten(2).transpose(1, 2))
        expected = model.norm(model.blocks(tokens))[:, 0]
        torch.testing.assert_close(method.encode(images), expected, rtol=1e-5, atol=1e-5)
    assert set(method.trainable_state_dict()) == {"below.map", "below.weight", "below.bias", "head.weight",
                                                  "head.bias"}


def test_resnet_below_equals_the_official_stem_in_eval_and_trains_batch_statistics(tmp_path):
    backbone = tiny_timm_convnet("resnet", seed=2)
    model = backbone.extra["model"]
    method = create_method("vpt-shallow", backbone, LABELS, location="below", num_tokens=2).eval()
    below = method.below
    torch.testing.assert_close(below.weight[:, :3].detach(), model.conv1.weight)
    assert float(below.weight.detach().abs().max()) <= xavier_bound(below.weight) + float(model.conv1.weight.abs().max())
    values = below.map.detach()  # uniform(0, 1) pixels: inside [0, 1], spread over it
    assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0 and float(values.max() - values.min()) > 0.5
    images = _images(4, seed=3)
    mean, std = sum((0.485, 0.456, 0.406)) / 3, sum((0.229, 0.224, 0.225)) / 3
    with torch.no_grad():
        stacked = torch.cat([images, ((below.map - mean) / std).expand(4, -1, -1, -1)], dim=1)
        x = nn.functional.conv2d(stacked, below.weight, None, stride=2, padding=3)
        x = model.maxpool(model.act1(model.bn1(x)))  # eval: the pretrained statistics
        expected = model.forward_head(model.layer4(model.layer3(model.layer2(model.layer1(x)))), pre_logits=True)
        torch.testing.assert_close(method.encode(images), expected, rtol=1e-5, atol=1e-5)
    before = below.running_mean.detach().clone()
    method.train()
    out = method({"image": images, "label": torch.tensor([0, 1, 0, 1])})
    out["loss"].backward()
    assert not torch.equal(before, below.running_mean)  # batch statistics, as the official train-mode stem
    assert below.norm_weight.grad.abs().sum() > 0 and below.map.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.visual.parameters())
    path = tmp_path / "prompts"
    save_prompts(method, path)
    fresh = create_method("vpt-shallow", backbone, LABELS, location="below", num_tokens=2)
    load_prompts(fresh, path)
    torch.testing.assert_close(fresh.below.running_var, below.running_var)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval().encode(images), method.eval().encode(images))
