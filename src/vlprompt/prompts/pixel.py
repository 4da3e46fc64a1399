"""Pixel-space visual prompts of VPT's ablations (KMnP/vpt ``vit_ablations.py``, ``resnet.py``, ``convnext.py``).

- ``PadPrompts`` (location ``pad``): a frame of learnable pixels, ``p`` wide, around the image, so an S x S image
  enters the backbone at (S + 2p) x (S + 2p). As the official code: a top/bottom strip [3, 2p, S + 2p] and a
  left/right strip [3, S, 2p], uniform(0, 1) in pixel space and normalised with the backbone's mean and std
  (the official hard-codes ImageNet's, which is what ImageNet backbones use); ``init="gaussian"`` draws N(0, 1)
  and skips the normalisation (the official ResNet's ``gaussian`` initiation).
- ``PixelTokenPrompts`` (location ``prepend-pixel``): k learnable P x P pixel patches [3, P, k*P], uniform(-v, v)
  with VPT's bound, turned into k tokens by the frozen patch embedding (no position embedding) and prepended
  after the prefix like token prompts; no dropout or projection, as the official.
"""

from __future__ import annotations

import torch
from torch import nn

from vlprompt.backbones.base import VisionTower
from vlprompt.prompts.visual import vpt_uniform_bound


class PadPrompts(nn.Module):
    """Learnable pixels padded around the image (VPT ``pad``)."""

    def __init__(
        self,
        num_tokens: int,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        init: str = "random",
    ) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"pad prompts need a frame at least 1 pixel wide, got {num_tokens}")
        self.num_tokens = num_tokens
        self.image_size = image_size
        self.tb = nn.Parameter(torch.empty(1, 3, 2 * num_tokens, image_size + 2 * num_tokens))
        self.lr = nn.Parameter(torch.empty(1, 3, image_size, 2 * num_tokens))
        self.normalise = init == "random"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        for strip in (self.tb, self.lr):
            if self.normalise:
                nn.init.uniform_(strip, 0.0, 1.0)
            else:
                nn.init.normal_(strip)

    def _pixels(self, strip: torch.Tensor) -> torch.Tensor:
        return (strip - self.mean) / self.std if self.normalise else strip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, 3, S + 2p, S + 2p]."""
        batch, _, height, width = images.shape
        if height != self.image_size or width != self.image_size:
            raise ValueError(
                f"pad prompts were made for {self.image_size} px images, got {height}x{width}"
            )
        p = self.num_tokens
        lr = self._pixels(self.lr).to(images.dtype).expand(batch, -1, -1, -1)
        tb = self._pixels(self.tb).to(images.dtype).expand(batch, -1, -1, -1)
        images = torch.cat([lr[..., :p], images, lr[..., p:]], dim=-1)
        return torch.cat([tb[:, :, :p], images, tb[:, :, p:]], dim=-2)


class PixelTokenPrompts(nn.Module):
    """k learnable pixel patches, embedded by the frozen patch embedding into k prompt tokens (VPT
    ``prepend-pixel``)."""

    def __init__(self, num_tokens: int, patch_size: int, width: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.pixels = nn.Parameter(torch.empty(1, 3, patch_size, patch_size * num_tokens))
        bound = vpt_uniform_bound(patch_size, width)
        nn.init.uniform_(self.pixels, -bound, bound)

    def insert(self, visual: VisionTower, tokens: torch.Tensor) -> torch.Tensor:
        """[prefix, patches] -> [prefix, embedded pixel prompts, patches]."""
        prompts = visual.patch_tokens(self.pixels.to(tokens.dtype)).expand(tokens.shape[0], -1, -1)
        prefix = visual.num_prefix_tokens
        return torch.cat([tokens[:, :prefix], prompts, tokens[:, prefix:]], dim=1)
