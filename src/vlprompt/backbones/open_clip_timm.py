"""open_clip image towers that are timm models (``open_clip.TimmModel``: EVA-CLIP, SigLIP, SigLIP 2).

open_clip builds the timm trunk with ``num_classes`` = the CLIP embedding size (or 0 with ``timm_proj: none``) and
its own ``global_pool``, so the trunk's head IS the image projection, and ``TimmModel.head`` may add a further
projection or MLP. The trunk is adapted by the timm adapters (timm_vit.TimmVisionTower, timm_eva.EvaVisionTower)
with the head kept; a non-empty ``TimmModel.head`` is applied after their readout by ``ProjectedTower``. The seams
(embed, block, finalize, pre_norm, block_sites, attention_projections) are the timm adapters' own, so VPT, IVLP /
MaPLe / PromptSRC vision prompts and LoRA reach these towers exactly as they reach a timm model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vlprompt.backbones.base import AttentionProjections, BlockSites, VisionTower
from vlprompt.core.errors import VlpromptError


class ProjectedTower(VisionTower):
    """A tower followed by one more module on its features (open_clip ``TimmModel.head``); every seam delegates."""

    def __init__(self, inner: VisionTower, projection: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.inner = inner
        self.projection = projection
        self.pooling = inner.pooling
        self.width = inner.width
        self.num_blocks = inner.num_blocks
        self.num_prefix_tokens = inner.num_prefix_tokens
        self.patch_size = inner.patch_size
        self.feature_dim = feature_dim

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.embed(images)

    def pre_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.inner.pre_norm(tokens)

    def block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        return self.inner.block(index, tokens)

    def block_modules(self) -> Sequence[nn.Module]:
        return self.inner.block_modules()

    def finalize(self, tokens: torch.Tensor, num_prompts: int = 0, pool_prompts: bool = False) -> torch.Tensor:
        return self.projection(self.inner.finalize(tokens, num_prompts, pool_prompts))

    def attention_projections(self, index: int) -> AttentionProjections:
        return self.inner.attention_projections(index)

    def block_sites(self, index: int) -> BlockSites:
        return self.inner.block_sites(index)

    def tower_sites(self) -> BlockSites:
        return self.inner.tower_sites()


def open_clip_timm_tower(visual: nn.Module, feature_dim: int) -> VisionTower:
    """The VisionTower of an open_clip ``TimmModel`` whose trunk is a timm ViT or EVA."""
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    from vlprompt.backbones.timm_eva import EvaVisionTower
    from vlprompt.backbones.timm_vit import TimmVisionTower

    trunk = visual.trunk
    if "pool" in dict(visual.head.named_children()):
        raise VlpromptError(
            "This open_clip timm image tower pools with open_clip's own attention pool (timm_pool 'abs_attn' / "
            "'rot_attn', a ConvNet head), which has no token readout for prompts. Pick a ViT or EVA tower."
        )
    if isinstance(trunk, Eva):
        inner: VisionTower = EvaVisionTower(trunk, keep_head=True)
    elif isinstance(trunk, VisionTransformer):
        inner = TimmVisionTower(trunk, keep_head=True)
    else:
        raise VlpromptError(
            f"This open_clip model's image tower is a timm {type(trunk).__name__}, neither a VisionTransformer nor "
            "an Eva; prompt methods need a ViT token pipeline. Pick a ViT, EVA or SigLIP open_clip architecture."
        )
    if len(visual.head) == 0:
        return inner
    return ProjectedTower(inner, visual.head, feature_dim)
