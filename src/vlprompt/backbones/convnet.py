"""Adapter over timm's ``ResNet`` and ``ConvNeXt``: stem -> stages -> the model's own head (pre-logits).

The official VPT code prompts ConvNets only in pixel space (KMnP/vpt ``models/resnet.py``, ``models/convnext.py``):
learnable pixels padded around the image (``pad``). So this tower declares prompt kind ``pixels``: token prompts
are refused, and the "blocks" of the pipeline are the stages (ResNet layer1..4, ConvNeXt stages 0..3), which is
also where the official partial-k cuts a ResNet. Tokens here are feature maps [B, C, H, W].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vlprompt.backbones.base import Backbone, BlockSites, VisionTower
from vlprompt.backbones.prompt_support import PROMPT_READOUTS, InputStem, PromptSupport
from vlprompt.backbones.timm_vit import timm_preprocess
from vlprompt.core.errors import VlpromptError


class ConvNetVisionTower(VisionTower):
    """A timm ResNet or ConvNeXt: ``embed`` is the stem, ``block(i)`` stage i, ``finalize`` the model's head."""

    pooling = "mean"
    num_prefix_tokens = 0

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from timm.models.convnext import ConvNeXt
        from timm.models.resnet import ResNet

        if isinstance(model, ResNet):
            self.family = "resnet"
            stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        elif isinstance(model, ConvNeXt):
            self.family = "convnext"
            stages = list(model.stages)
        else:
            raise VlpromptError(f"ConvNetVisionTower takes a timm ResNet or ConvNeXt, not {type(model).__name__}.")
        if model.get_classifier() is not None and not isinstance(model.get_classifier(), nn.Identity):
            model.reset_classifier(0)
        self.model = model
        self._stages = stages
        self.num_blocks = len(stages)
        self.feature_dim = int(model.num_features)
        self.width = self.feature_dim
        self.patch_size = 4  # both stems reduce by 4 (ResNet conv+maxpool, ConvNeXt patchify)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.family == "resnet":
            return model.maxpool(model.act1(model.bn1(model.conv1(images))))
        return model.stem(images)

    def embed_any_size(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)  # convolutions and global pooling take any size

    def block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        return self._stages[index](tokens)

    def block_modules(self) -> Sequence[nn.Module]:
        return list(self._stages)

    def finalize(self, tokens: torch.Tensor, num_prompts: int = 0, pool_prompts: bool = False) -> torch.Tensor:
        if self.family == "convnext":
            tokens = self.model.norm_pre(tokens)
        return self.model.forward_head(tokens, pre_logits=True)

    def block_sites(self, index: int) -> BlockSites:
        raise VlpromptError(
            f"A {self.family} has convolutional stages, not transformer blocks with attention and MLP places, so "
            "bias-only tuning through block places, adapters, AdaptFormer, SSF, LoRA and LayerNorm tuning cannot "
            "attach to it. Use a ViT or Swin backbone for them, or linear / partial-k / vpt pad on this one."
        )

    def prompt_support(self) -> PromptSupport:
        tokens = "a ConvNet has no token sequence; the official code prompts ResNets and ConvNeXts in pixel space only"
        refusals = dict.fromkeys(("prepend", "add", "add-1", "prepend-pixel"), tokens)
        refusals["below"] = "the official ConvNeXt code refuses it ('Not support prompt-below'); use pad"
        refusals.update(dict.fromkeys(PROMPT_READOUTS[1:], "a ConvNet has no prompt tokens to pool"))
        locations = ("pad", "below") if self.family == "resnet" else ("pad",)
        return PromptSupport(kind="pixels", block_widths=(), locations=locations, refusals=refusals)

    def input_stem(self) -> InputStem:
        if self.family != "resnet":
            return super().input_stem()
        return InputStem(conv=self.model.conv1, norm=self.model.bn1, style="resnet")

    def embed_after_stem(self, features: torch.Tensor) -> torch.Tensor:
        if self.family != "resnet":
            return super().embed_after_stem(features)
        return self.model.maxpool(self.model.act1(features))


def wrap_timm_convnet(model: nn.Module, backbone_id: str) -> Backbone:
    """A timm ResNet / ConvNeXt as a Backbone (its own global pooling and head norm, no classifier)."""
    return Backbone(
        backbone_id=backbone_id,
        visual=ConvNetVisionTower(model),
        preprocess=timm_preprocess(model),
        kind="convnet",
        extra={"model": model},
    )
