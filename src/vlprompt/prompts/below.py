"""VPT's ``below`` prompts: k learnable input channels stacked below the image's three, through a retrained
input convolution (KMnP/vpt ``vit_prompt/vit_ablations.py`` and ``models/resnet.py``).

The official code replaces the backbone's first convolution by one with 3 + k input channels whose first three
take the pretrained weights, and trains it together with the prompt map, so "below" is a prompt plus a retrained
input projection. This module holds that convolution (its own copy: the backbone stays frozen and shared):
- ViT (patch embedding): the extra channels' weights and the prompt map uniform(-v, v) with VPT's bound, the bias
  the pretrained one; the map enters as is;
- ResNet (conv1): Xavier-uniform over the whole 3 + k channel kernel, then the pretrained weights into the first
  three; the map uniform(0, 1) normalised by the mean of ImageNet's means and stds; and, as the official (whose
  stem stays in training mode while it trains), a trainable copy of the stem BatchNorm that uses batch statistics
  in training and updates running statistics, which are saved with the prompts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlprompt.prompts.visual import vpt_uniform_bound

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class BelowPrompts(nn.Module):
    """Prompt channels + the retrained input convolution (and, for a ResNet stem, its BatchNorm)."""

    def __init__(
        self, num_tokens: int, image_size: int, conv: nn.Conv2d, norm: nn.Module | None, family: str
    ) -> None:
        super().__init__()
        if family not in ("vit", "resnet"):
            raise ValueError(f"below prompts exist for ViT and ResNet stems, not {family!r}")
        self.family = family
        out_channels, _, kh, kw = conv.weight.shape
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.map = nn.Parameter(torch.empty(1, num_tokens, image_size, image_size))
        weight = torch.empty(out_channels, 3 + num_tokens, kh, kw, dtype=conv.weight.dtype)
        if family == "vit":
            bound = vpt_uniform_bound(kh, out_channels)
            nn.init.uniform_(self.map, -bound, bound)
            nn.init.uniform_(weight, -bound, bound)
            self.map_mean = self.map_std = None
        else:
            nn.init.uniform_(self.map, 0.0, 1.0)
            nn.init.xavier_uniform_(weight)
            self.map_mean = sum(_IMAGENET_MEAN) / 3
            self.map_std = sum(_IMAGENET_STD) / 3
        weight[:, :3] = conv.weight.detach()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None
        self.norm_weight = self.norm_bias = self.running_mean = self.running_var = None
        if norm is not None:
            self.norm_weight = nn.Parameter(norm.weight.detach().clone())
            self.norm_bias = nn.Parameter(norm.bias.detach().clone())
            # running statistics change in training (as the official's train-mode stem); parameters without
            # gradient so that the prompt checkpoint carries them
            self.running_mean = nn.Parameter(norm.running_mean.detach().clone(), requires_grad=False)
            self.running_var = nn.Parameter(norm.running_var.detach().clone(), requires_grad=False)
            self.momentum = 0.1 if norm.momentum is None else float(norm.momentum)
            self.eps = float(norm.eps)

    def statistics_names(self) -> list[str]:
        """Names of the running statistics (not trained by gradient, but saved with the prompts)."""
        return [] if self.running_mean is None else ["running_mean", "running_var"]

    def prompt_channels(self, batch: int) -> torch.Tensor:
        channels = self.map if self.map_mean is None else (self.map - self.map_mean) / self.map_std
        return channels.expand(batch, -1, -1, -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] -> the stem's output (before what the tower runs after it)."""
        stacked = torch.cat([images, self.prompt_channels(images.shape[0]).to(images.dtype)], dim=1)
        out = nn.functional.conv2d(stacked, self.weight, self.bias, self.stride, self.padding, self.dilation)
        if self.norm_weight is None:
            return out
        return nn.functional.batch_norm(
            out, self.running_mean, self.running_var, self.norm_weight, self.norm_bias,
            training=self.training, momentum=self.momentum, eps=self.eps,
        )


def xavier_bound(weight: torch.Tensor) -> float:
    """The Xavier-uniform bound of a conv kernel, for tests of the ResNet init."""
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    fan_out = weight.shape[0] * weight.shape[2] * weight.shape[3]
    return math.sqrt(6.0 / (fan_in + fan_out))
