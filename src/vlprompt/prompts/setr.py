"""SETR's decoders (Zheng et al., CVPR 2021) on a ViT's patch-token grid, as mmsegmentation's ``SETRUPHead`` defines
them (re-derived from its definition and configs, not copied).

One head: a LayerNorm over each token (the ViT's block outputs are read raw, without the tower's final norm, as
mmsegmentation's ViT with ``final_norm=False`` feeds SETR), then ``num_convs`` stages of
[conv k x k -> BatchNorm -> ReLU -> bilinear upsampling x up_scale], then a 1x1 conv to the classes.

- naive (``setr-naive``): 1 stage, 1x1 conv, x4 (mmseg's setr_naive decode head; its auxiliary heads use 2 stages).
- PUP (``setr-pup``): progressive x2 upsampling with 3x3 convs, 4 stages for patch 16 (to full resolution); here
  log2(patch size) stages by default, so a patch-4 tower also reaches its input resolution. Auxiliary heads: 2.
- Auxiliary heads read blocks 10, 15 and 20 of ViT-L's 24 (mmseg ``out_indices`` 9, 14, 19, 0-based) with loss
  weight 0.4; on another depth the same fractions, rounded.

We differ from the official code in one place: BatchNorm2d rather than SyncBN (each process normalises its own
batch under multi-process training). MLA (multi-level aggregation) is not provided.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlprompt.core.errors import ConfigError

SETR_KINDS = ("setr-pup", "setr-naive")
# mmseg out_indices (9, 14, 19) of ViT-L's 24 blocks feed SETR's auxiliary heads.
SETR_AUX_OF_24 = (9, 14, 19)


@dataclass(frozen=True)
class SetrHeadSpec:
    kind: str
    channels: int
    num_convs: int
    kernel_size: int
    up_scale: int


def setr_spec(kind: str, patch_size: int, channels: int, num_convs: int | None, kernel_size: int | None,
              up_scale: int | None) -> SetrHeadSpec:
    """SETR's stage layout for ``kind``, with any given field overriding its default."""
    if kind not in SETR_KINDS:
        raise ConfigError(f"segmentation head kind = {kind!r}; choose one of {list(SETR_KINDS)}.")
    if kind == "setr-naive":
        defaults = (1, 1, 4)
    else:
        defaults = (max(1, round(math.log2(patch_size))), 3, 2)
    return SetrHeadSpec(
        kind,
        channels,
        num_convs if num_convs is not None else defaults[0],
        kernel_size if kernel_size is not None else defaults[1],
        up_scale if up_scale is not None else defaults[2],
    )


def setr_aux_blocks(aux_blocks: list | str, num_blocks: int) -> tuple[int, ...]:
    """Block indices (0-based) feeding auxiliary heads: SETR's fractions of 24 blocks scaled to the depth."""
    if aux_blocks == "none":
        return ()
    if aux_blocks == "setr":
        scaled = {max(0, round((index + 1) * num_blocks / 24) - 1) for index in SETR_AUX_OF_24}
        return tuple(sorted(b for b in scaled if b < num_blocks - 1))
    blocks = tuple(int(b) for b in aux_blocks)
    bad = [b for b in blocks if not 0 <= b < num_blocks]
    if bad:
        raise ConfigError(f"aux_blocks {bad} are not blocks of this {num_blocks}-block tower (0..{num_blocks - 1}).")
    return tuple(sorted(set(blocks)))


class SetrUpHead(nn.Module):
    """Token norm, ``num_convs`` x [conv, BN, ReLU, upsample], 1x1 classifier: [B, d, h, w] -> [B, C, h*s^n, w*s^n]."""

    def __init__(self, width: int, num_classes: int, spec: SetrHeadSpec) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        stages = []
        in_channels = width
        for _ in range(spec.num_convs):
            stages.append(nn.Sequential(
                nn.Conv2d(in_channels, spec.channels, spec.kernel_size, padding=(spec.kernel_size - 1) // 2,
                          bias=False),
                nn.BatchNorm2d(spec.channels),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=spec.up_scale, mode="bilinear", align_corners=False),
            ))
            in_channels = spec.channels
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmseg's initialisation: Kaiming-normal convs (ConvModule), BN 1/0, the classifier N(0, 0.01) with zero
        bias (BaseDecodeHead.cls_seg), LayerNorm 1/0."""
        for module in self.stages.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        b, d, h, w = feature_map.shape
        tokens = self.norm(feature_map.flatten(2).transpose(1, 2))
        x = tokens.transpose(1, 2).reshape(b, d, h, w)
        return self.classifier(self.stages(x))
