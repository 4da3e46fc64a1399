"""Visual prompts (VPT / SPT), their initialisers and the image-tower baselines on tiny random-init ViTs."""
from __future__ import annotations

import pytest
import torch
import timm
from torch import nn

from vlprompt.backbones.base import Backbone, PreprocessConfig, VisionTower
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import create_method

import vlprompt.methods.linear  # noqa: F401  (registers the method)


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


def tiny_backbone(seed: int = 0, pooling: str = "cls") -> Backbone:
    torch.manual_seed(seed)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0,
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
