"""Visual prompts (VPT / SPT), their initialisers and the image-tower baselines on tiny random-init ViTs."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import vlprompt.methods.linear
import vlprompt.methods.vpt  # noqa: F401
from vlprompt.backbones.base import Backbone, PreprocessConfig, VisionTower
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import create_method
from vlprompt.prompts.visual import VisualPrompts, prompted_forward, prompted_tokens, vpt_uniform_bound


class _TinyTimmTower(VisionTower):
    """Stand-in adapter over a timm VisionTransformer until the shared tiny backbones exist."""

    def __init__(self, model: nn.Module, pooling: str = "cls") -> None:
        super().__init__()
        self.model = model
        self.width = model.embed_dim
        self.num_blocks = len(model.blocks)
        self.num_prefix_tokens = model.num_prefix_tokens
        self.patch_size = model.patch_embed.patch_size[0]
        self.feature_dim = model.embed_dim
        self.pooling = pooling

    def embed(self, images):
        x = self.model.patch_embed(images)
        return self.model.norm_pre(self.model._pos_embed(x))

    def block(self, index, tokens):
        return self.model.blocks[index](tokens)

    def block_modules(self):
        return list(self.model.blocks)

    def finalize(self, tokens, num_prompts=0, pool_prompts=False):
        tokens = self.model.norm(tokens)
        if self.pooling == "cls":
            return tokens[:, 0]
        start = self.num_prefix_tokens + (0 if pool_prompts else num_prompts)
        return tokens[:, start:].mean(dim=1)


def tiny_backbone(seed: int = 0, pooling: str = "cls", width: int = 32, depth: int = 2) -> Backbone:
    torch.manual_seed(seed)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=width,
        depth=depth,
        num_heads=2,
        num_classes=0,
        global_pool="token" if pooling == "cls" else "avg",
    )
    tower = _TinyTimmTower(model, pooling)
    pre = PreprocessConfig(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return Backbone("test:tiny-vit", tower, pre, kind="vit" if pooling == "cls" else "mae")


LABELS = LabelSpace(["a", "b", "c"])


def test_linear_probe_trains_head_only_and_accepts_cached_features():
    backbone = tiny_backbone()
    method = create_method("linear", backbone, LABELS)
    assert method.uses_image_features
    trainable = method.trainable_parameters()
    assert sum(p.numel() for p in trainable) == 32 * 3 + 3
    images = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0])
    features = method.image_features(images)
    from_images = method({"image": images, "label": labels})
    from_features = method({"features": features, "label": labels})
    torch.testing.assert_close(from_images["logits"], from_features["logits"])
    from_features["loss"].backward()
    assert all(p.grad is None for p in backbone.visual.parameters())
    assert method({"features": features})["loss"] is None


# ----- VPT -----


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("depth", [1, 2])
def test_zero_length_prompts_equal_backbone_forward(pooling, depth):
    backbone = tiny_backbone(pooling=pooling)
    empty = VisualPrompts(0, backbone.visual.width, depth=depth, patch_size=8)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(prompted_forward(backbone.visual, empty, images), backbone.visual(images))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_shallow_prompts_are_invariant_to_position(pooling):
    """Prompts carry no position embedding and ViT blocks are permutation-equivariant, so placing the prompts
    after the patches instead of after the prefix gives the same readout."""
    backbone = tiny_backbone(pooling=pooling)
    visual = backbone.visual
    prompts = VisualPrompts(4, visual.width, patch_size=8).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = prompted_forward(visual, prompts, images, pool_prompts=False)
        tokens = visual.embed(images)
        tokens = torch.cat([tokens, prompts.prompts(0, 2)], dim=1)
        for index in range(visual.num_blocks):
            tokens = visual.block(index, tokens)
        tokens = tokens[:, :-4]  # drop prompts, then read out as without prompts
        moved = visual.finalize(tokens)
    torch.testing.assert_close(moved, expected, rtol=1e-5, atol=1e-5)


class _HandTower(VisionTower):
    """Two hand-written blocks on 1-d tokens: block i maps x -> 10*x + i + sum of the sequence (mixes tokens)."""

    width = 1
    num_blocks = 2
    num_prefix_tokens = 1
    patch_size = 1
    feature_dim = 1
    pooling = "cls"

    def embed(self, images):
        return images  # "images" are already tokens [B, T, 1]

    def block(self, index, tokens):
        return 10 * tokens + index + tokens.sum(dim=1, keepdim=True)

    def block_modules(self):
        return []

    def finalize(self, tokens, num_prompts=0, pool_prompts=False):
        return tokens[:, 0]


def test_deep_prompts_replace_previous_outputs_in_hand_built_two_block_case():
    tower = _HandTower()
    prompts = VisualPrompts(1, 1, depth=2, patch_size=1)
    prompts.set_tokens(torch.tensor([[[1.0]], [[2.0]]]))
    tokens = torch.tensor([[[3.0], [5.0]]])  # [CLS=3, patch=5]
    seen = {}
    out = prompted_tokens(tower, prompts, tokens, on_block_input=lambda i, t: seen.setdefault(i, t.clone()))
    # block 0 input [3, 1, 5]; sum 9 -> outputs [39, 19, 59]
    torch.testing.assert_close(seen[0], torch.tensor([[[3.0], [1.0], [5.0]]]))
    # block 1 input: the prompt output 19 is discarded for the layer-1 prompt 2 -> [39, 2, 59]
    torch.testing.assert_close(seen[1], torch.tensor([[[39.0], [2.0], [59.0]]]))
    # sum 100 -> 10*x + 1 + 100
    torch.testing.assert_close(out, torch.tensor([[[491.0], [121.0], [691.0]]]))
    shallow = VisualPrompts(1, 1, depth=1, patch_size=1)
    shallow.set_tokens(torch.tensor([[[1.0]]]))
    out_shallow = prompted_tokens(tower, shallow, tokens)
    # shallow keeps the prompt output 19: block 1 input [39, 19, 59], sum 117
    torch.testing.assert_close(out_shallow, torch.tensor([[[508.0], [308.0], [708.0]]]))


@pytest.mark.parametrize("name,depth", [("vpt-shallow", 1), ("vpt-deep", 3)])
def test_parameter_counts(name, depth):
    backbone = tiny_backbone(depth=3)
    d, p, classes = backbone.visual.width, 5, LABELS.num_classes
    method = create_method(name, backbone, LABELS, num_tokens=p)
    head = d * classes + classes
    assert sum(t.numel() for t in method.trainable_parameters()) == depth * p * d + head
    projected = create_method(name, tiny_backbone(depth=3), LABELS, num_tokens=p, projection_dim=8)
    assert sum(t.numel() for t in projected.trainable_parameters()) == depth * p * 8 + 8 * d + d + head


def test_init_bound():
    bound = vpt_uniform_bound(16, 768)
    assert bound == pytest.approx((6 / (3 * 16 * 16 + 768)) ** 0.5)
    prompts = VisualPrompts(50, 32, depth=4, patch_size=8)
    limit = vpt_uniform_bound(8, 32)
    assert prompts.tokens.abs().max() <= limit
    assert prompts.tokens.abs().max() > 0.9 * limit  # uniform over the whole interval, not a narrower init
    assert VisualPrompts(50, 32, projection_dim=4, patch_size=8).init_bound == vpt_uniform_bound(8, 4)


def test_vpt_trains_prompts_and_head_only_with_backbone_in_eval_mode():
    backbone = tiny_backbone()
    method = create_method("vpt-deep", backbone, LABELS, num_tokens=3)
    assert method.prompts.dropout.p == 0.1
    assert create_method("vpt-shallow", tiny_backbone(), LABELS).prompts.dropout.p == 0.0
    method.train()
    assert not backbone.visual.training and method.prompts.training
    out = method({"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0])})
    out["loss"].backward()
    assert method.prompts.tokens.grad is not None and method.prompts.tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.visual.parameters())
    assert out["logits"].shape == (4, 3)


def test_mean_readout_counts_prompts_only_when_asked():
    backbone = tiny_backbone(pooling="mean")
    images = torch.randn(2, 3, 32, 32)
    method = create_method("vpt-shallow", backbone, LABELS, num_tokens=4).eval()
    with torch.no_grad():
        tokens = prompted_tokens(backbone.visual, method.prompts, images)
        normed = backbone.visual.model.norm(tokens)
        torch.testing.assert_close(method.encode(images), normed[:, 1:].mean(dim=1))
        method.config.pool_prompts = False
        torch.testing.assert_close(method.encode(images), normed[:, 5:].mean(dim=1))


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"num_tokens": 0}, "num_tokens"),
        ({"dropout": 1.5}, "dropout"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"num_tokns": 3}, "num_tokens"),
    ],
)
def test_vpt_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        create_method("vpt-deep", tiny_backbone(), LABELS, **overrides)
