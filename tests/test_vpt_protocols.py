"""VPT Table 1's other protocols against the official definitions (KMnP/vpt ``mlp.py``, ``vit_models.py``).

The head (MLP_NUM hidden layers, kaiming fan-out, prior-probability bias), Mlp-k on cached features, side-tuning's
sigmoid(alpha) blend of the frozen feature with a projected side feature, and prompt + bias, each recomputed by hand.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.tiny import tiny_timm_vit
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import create_method
from vlprompt.prompts.heads import TrackedBatchNorm1d, VPTHead, frozen_statistics
from vlprompt.prompts.side import SideNetwork
from vlprompt.prompts.visual import prompted_forward

LABELS = LabelSpace(["a", "b", "c"], ["a photo of a {}."], {})
IMAGES = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_vpt_head_is_the_official_mlp():
    torch.manual_seed(0)
    head = VPTHead(16, 5, mlp_num=3)
    kinds = [type(m) for m in head.projection]
    assert kinds == [nn.Linear, nn.ReLU, TrackedBatchNorm1d, nn.Dropout] * 3
    assert [m.p for m in head.projection if isinstance(m, nn.Dropout)] == [0.1] * 3
    torch.testing.assert_close(head.last_layer.bias, torch.full((5,), -math.log(99.0)))
    # kaiming-normal fan_out: std sqrt(2 / fan_out) = sqrt(2 / 5) for the last layer (80 draws: within 35%)
    assert abs(float(head.last_layer.weight.detach().std()) / math.sqrt(2 / 5) - 1) < 0.35
    head.train()
    x = torch.randn(8, 16)
    head(x)  # one training step of statistics
    head.eval()
    expected = x
    for i in range(3):
        linear, norm = head.projection[4 * i], head.projection[4 * i + 2]
        expected = F.relu(F.linear(expected, linear.weight, linear.bias))
        expected = (expected - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
    expected = F.linear(expected, head.last_layer.weight, head.last_layer.bias)
    torch.testing.assert_close(head(x), expected, rtol=1e-5, atol=1e-5)
    assert set(frozen_statistics(head, "head")) == {f"head.projection.{4 * i + 2}.{s}" for i in range(3)
                                                     for s in ("running_mean", "running_var", "num_batches_tracked")}
    head.train()
    assert head(x[:1]).shape == (1, 5)  # a training batch of one uses the running statistics instead of failing


def test_mlp_k_reads_cached_features_through_the_official_head():
    backbone = tiny_timm_vit()
    torch.manual_seed(0)
    method = create_method("mlp-k", backbone, LABELS, k=2).eval()
    assert method.uses_image_features and len([m for m in method.head.projection if isinstance(m, nn.Linear)]) == 2
    features = backbone.visual(IMAGES).detach()
    torch.testing.assert_close(method.predict({"features": features}), method.head(features))
    torch.testing.assert_close(method.predict({"image": IMAGES}), method.head(features))
    assert [n for n, p in method.named_parameters() if p.requires_grad and not n.startswith("head.")] == []


def test_sidetune_blends_through_sigmoid_alpha_as_the_official_model():
    backbone = tiny_timm_vit()
    torch.manual_seed(0)
    method = create_method("sidetune", backbone, LABELS, side_model="test_efficientnet", side_pretrained=False).eval()
    side = method.side
    assert float(side.alpha) == 0.0 and side.projection.bias is None
    with torch.no_grad():
        side.alpha.fill_(0.7)
    frozen = backbone.visual(IMAGES)
    side_feature = F.linear(side.network(IMAGES).flatten(1), side.projection.weight)
    weight = 1 / (1 + math.exp(-0.7))
    expected = method.head(weight * frozen + (1 - weight) * side_feature)
    torch.testing.assert_close(method.predict({"image": IMAGES}), expected, rtol=1e-5, atol=1e-5)
    trained = {n.split(".")[0] for n, p in method.named_parameters() if p.requires_grad}
    assert trained == {"side", "head"}  # the side network trains in full; the tower not at all


def test_the_official_side_network_is_alexnet_features_with_a_9216_feature():
    side = SideNetwork("alexnet", width=32, image_size=224, pretrained=False)
    assert [name for name, _ in side.network.named_children()] == ["features", "avgpool"]
    assert side.projection.in_features == 256 * 6 * 6 and side.projection.out_features == 32


def test_prompt_plus_bias_is_vpt_with_trainable_biases():
    backbone = tiny_timm_vit()
    torch.manual_seed(0)
    method = create_method("prompt+bias", backbone, LABELS).eval()
    trained = {n for n, p in method.named_parameters() if p.requires_grad}
    biases = {f"visual.{n}" for n, _ in backbone.visual.named_parameters() if "bias" in n}
    assert trained == {"prompts.tokens"} | biases | {"head.last_layer.weight", "head.last_layer.bias"}
    assert method.prompts.depth == backbone.visual.num_blocks  # deep by default
    # With the biases as loaded, the forward is VPT-deep's with the same prompts on the frozen tower.
    expected = prompted_forward(backbone.visual, method.prompts, IMAGES, pool_prompts=True)
    torch.testing.assert_close(method.encode(IMAGES), expected, rtol=0, atol=0)
    with torch.no_grad():
        method.visual.model.blocks[0].mlp.fc2.bias.add_(1.0)
    assert not torch.allclose(method.encode(IMAGES), expected)
    shallow = create_method("prompt+bias", backbone, LABELS, deep=False)
    assert shallow.prompts.depth == 1
