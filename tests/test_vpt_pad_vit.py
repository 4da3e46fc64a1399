"""VPT ``pad`` on a timm ViT against the official ``vit_ablations.py``: the model at S + 2p, its position
embeddings resized at load by ``scipy.ndimage.zoom(order=1)`` over the patch grid, the framed image through it."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

import vlprompt.methods.vpt  # noqa: F401
from vlprompt.backbones.tiny import tiny_timm_vit
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import create_method

LABELS = LabelSpace(["a", "b"])


def test_vit_pad_equals_the_official_enlarged_model():
    backbone = tiny_timm_vit("vit", seed=3)
    model = backbone.extra["model"]
    p = 4  # 32 + 8 = 40 px: a 5 x 5 grid of 8 px patches instead of 4 x 4
    method = create_method("vpt-shallow", backbone, LABELS, location="pad", num_tokens=p).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # the frame is normalised like the images: the official hard-codes ImageNet's mean / std, which is what its
    # image transform uses; here the backbone's own (0.5 / 0.5 for this ViT config)
    mean = torch.tensor(backbone.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.preprocess.std).view(1, 3, 1, 1)
    assert backbone.preprocess.mean == (0.5, 0.5, 0.5)
    lr, tb = (method.pad.lr.detach() - mean) / std, (method.pad.tb.detach() - mean) / std
    framed = torch.cat([lr[..., :p].expand(2, -1, -1, -1), images, lr[..., p:].expand(2, -1, -1, -1)], dim=-1)
    framed = torch.cat([tb[:, :, :p].expand(2, -1, -1, -1), framed, tb[:, :, p:].expand(2, -1, -1, -1)], dim=-2)
    posemb = model.pos_embed.detach().numpy()
    grid = posemb[0, 1:].reshape(4, 4, -1)
    grid = ndimage.zoom(grid, (5 / 4, 5 / 4, 1), order=1).reshape(1, 25, -1)
    posemb = torch.from_numpy(np.concatenate([posemb[:, :1], grid], axis=1))
    with torch.no_grad():
        patches = model.patch_embed.proj(framed).flatten(2).transpose(1, 2)
        tokens = torch.cat([model.cls_token.expand(2, -1, -1), patches], dim=1) + posemb
        expected = model.norm(model.blocks(tokens))[:, 0]
        torch.testing.assert_close(method.encode(images), expected, rtol=1e-5, atol=1e-5)


def test_embed_any_size_at_the_native_size_is_embed():
    backbone = tiny_timm_vit("vit", seed=4)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(backbone.visual.embed_any_size(images), backbone.visual.embed(images), rtol=0, atol=0)
