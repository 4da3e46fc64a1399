"""Which adapter a timm model gets, chosen by the model's class (``timm:<arch>`` names of every family).

ViTs go to timm_vit.py, Swin Transformers to swin.py, ResNets and ConvNeXts to convnet.py; each family's
checkpoint filter (timm's own key conversion for older layouts) comes from the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import VlpromptError

SUPPORTED = "ViTs ('vit_*', 'deit_*', EVA-02 'eva02_*'), Swin Transformers ('swin_*'), ResNets ('resnet*') and ConvNeXts ('convnext_*')"


def _families() -> list[tuple[type, str, Callable[..., Any] | None]]:
    from timm.models import convnext, eva, resnet, swin_transformer, vision_transformer

    return [
        (vision_transformer.VisionTransformer, "vit", vision_transformer.checkpoint_filter_fn),
        # EVA-02 (rope, SwiGLU) is a ViT token pipeline too; its own filter converts the original EVA key names
        (eva.Eva, "vit", eva.checkpoint_filter_fn),
        (swin_transformer.SwinTransformer, "swin", swin_transformer.checkpoint_filter_fn),
        (convnext.ConvNeXt, "convnet", convnext.checkpoint_filter_fn),
        (resnet.ResNet, "convnet", None),
    ]


def timm_family(model: nn.Module, backbone_id: str) -> tuple[str, Callable[..., Any] | None]:
    """('vit' | 'swin' | 'convnet', timm's checkpoint filter for it) by the model's class."""
    for cls, family, filter_fn in _families():
        if isinstance(model, cls):
            return family, filter_fn
    raise VlpromptError(
        f"Backbone '{backbone_id}' is a timm {type(model).__name__}; vlprompt adapts {SUPPORTED}. Pick one of those "
        "architectures (timm.list_models('swin_*') lists them)."
    )


def wrap_timm_model(model: nn.Module, backbone_id: str, kind: str = "vit") -> Backbone:
    """The adapter for ``model``'s family; ``kind`` ('vit' or 'mae') applies to ViTs only."""
    family, _ = timm_family(model, backbone_id)
    if family == "vit":
        from vlprompt.backbones.timm_vit import wrap_timm_vit

        return wrap_timm_vit(model, backbone_id=backbone_id, kind=kind)
    if kind != "vit":
        raise VlpromptError(
            f"Backbone '{backbone_id}': kind={kind!r} (a self-supervised ViT readout) applies to ViTs only, and "
            f"this is a timm {type(model).__name__}. Leave kind unset."
        )
    if family == "swin":
        from vlprompt.backbones.swin import wrap_timm_swin

        return wrap_timm_swin(model, backbone_id)
    from vlprompt.backbones.convnet import wrap_timm_convnet

    return wrap_timm_convnet(model, backbone_id)
