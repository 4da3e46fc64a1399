"""Side-tuning's side network (VPT Table 1 "Sidetune"; KMnP/vpt ``src/models/vit_models.py`` ``setup_side``).

The official side network is torchvision's ImageNet AlexNet cut after ``features`` + ``avgpool`` (a 9216-d feature),
trained in full; a Linear without bias projects it to the frozen feature's width, and a scalar alpha (init 0) blends:
``sigmoid(alpha) * frozen + (1 - sigmoid(alpha)) * projected_side``. ``side_model="alexnet"`` builds exactly that;
any other name is a timm model with its classifier removed (its pooled feature is projected the same way).

Weights: a local file (``weights=PATH``: safetensors, or a state dict read with ``torch.load(weights_only=True)``),
else the ImageNet weights found in the local torch-hub / Hugging Face cache or downloaded when reachable, else a
clear error; ``pretrained=False`` starts the side network from random init.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import nn

from vlprompt.core.errors import VlpromptError
from vlprompt.prompts.heads import statistics_as_parameters

OFFICIAL_SIDE = "alexnet"


def _read_state(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise VlpromptError(f"Side network weights file '{path}' does not exist; pass an existing file.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _no_weights(name: str, error: Exception | None) -> VlpromptError:
    why = f" ({error})" if error is not None else ""
    return VlpromptError(
        f"The side network '{name}' needs ImageNet weights, which are not in the local cache and could not be "
        f"downloaded{why}. Pass method_options.side_weights=PATH (a local file), or side_pretrained=false to start "
        "it from random init."
    )


def _alexnet(pretrained: bool, weights: str | None) -> nn.Module:
    from torchvision.models import AlexNet_Weights, alexnet

    model = alexnet(weights=None)
    if weights is not None:
        model.load_state_dict(_read_state(weights))
    elif pretrained:
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url))
        if os.path.isfile(cached):
            model.load_state_dict(_read_state(cached))
        else:
            try:
                model.load_state_dict(AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False))
            except (OSError, RuntimeError, ValueError) as error:
                raise _no_weights(OFFICIAL_SIDE, error) from error
    return nn.Sequential(OrderedDict([("features", model.features), ("avgpool", model.avgpool)]))


def _timm(name: str, pretrained: bool, weights: str | None) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise VlpromptError(
            f"The side network '{name}' is neither 'alexnet' (the official one) nor a timm architecture "
            "(timm.list_models() lists them)."
        )
    if weights is None and not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=0)
    if weights is None:
        from vlprompt.backbones.timm_vit import _find_timm_weights

        weights = _find_timm_weights(name)
    try:
        if weights is not None:
            return timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": weights})
        return timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError, ValueError) as error:
        raise _no_weights(name, error) from error


class SideNetwork(nn.Module):
    """The side network, its projection to ``width`` and the blend weight alpha."""

    def __init__(self, name: str, width: int, image_size: int, pretrained: bool = True,
                 weights: str | None = None) -> None:
        super().__init__()
        self.network = _alexnet(pretrained, weights) if name == OFFICIAL_SIDE else _timm(name, pretrained, weights)
        with torch.no_grad():  # the feature size at this image size (and a clear error if it cannot take it)
            was_training = self.network.training
            self.network.eval()
            try:
                feature_dim = self.features(torch.zeros(1, 3, image_size, image_size)).shape[1]
            except RuntimeError as error:
                raise VlpromptError(
                    f"The side network '{name}' cannot take {image_size}-px images ({error}); pick a side_model "
                    "that accepts the backbone's image size."
                ) from error
            self.network.train(was_training)
        statistics_as_parameters(self.network)  # trained with it, so saved with it
        self.projection = nn.Linear(feature_dim, width, bias=False)
        self.alpha = nn.Parameter(torch.tensor(0.0))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images).flatten(1)

    def forward(self, images: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
        """Blend the frozen features [B, width] with the projected side features of the same images."""
        side = self.projection(self.features(images))
        weight = torch.sigmoid(self.alpha)
        return weight * frozen + (1 - weight) * side
