"""Backbones by name: registered names ("world:clip", "tiny:...") and the library patterns below.

- ``timm:<arch>[.<tag>]``          a timm ViT, Swin, ResNet or ConvNeXt (adapter chosen by the model's class); weights from ``weights=PATH``, the local HF / torch-hub cache, or
                                   the hub when reachable; ``pretrained=False`` or ``random_init=True`` for random init.
- ``open_clip:<arch>@<pretrained>`` an open_clip CLIP; ``<pretrained>`` is a local file or a tag found in the cache;
                                   ``open_clip:local-dir:<folder>`` reads an open_clip model folder;
                                   ``open_clip:hf-hub:<repo>`` a model repo (open_clip_config.json + weights) from
                                   the local HF cache, or the hub when reachable.
- ``hf:<repo-or-path>``            a transformers CLIPModel from a local folder or the HF cache.

This module keeps only the names and the dispatch; each loader lives beside its adapter (timm_vit.py,
open_clip_load.py, hf_clip.py; world.py registers the world names). Loading never waits on an unreachable network:
the cache is searched first, offline mode (HF_HUB_OFFLINE=1) is honoured, and the hub is tried only after a short
reachability probe (hub.py); every failure becomes one VlpromptError that says how to provide the weights.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import unknown_name
from vlprompt.core.registry import Registry

BackboneFactory = Callable[..., Backbone]
NAME_PATTERNS = (
    "timm:<arch>[.<tag>]",
    "open_clip:<arch>@<pretrained>",
    "open_clip:local-dir:<folder>",
    "open_clip:hf-hub:<repo>",
    "hf:<repo-or-path>",
)
# modules that register names when imported; optional while they are being written
_REGISTERING_MODULES = ("vlprompt.backbones.world",)
# each library prefix's loader, beside its adapter; imported on first use so that naming a world backbone never
# imports timm's or transformers' loading code
_LOADERS = {
    "timm": ("vlprompt.backbones.timm_vit", "create_timm"),
    "open_clip": ("vlprompt.backbones.open_clip_load", "create_open_clip"),
    "hf": ("vlprompt.backbones.hf_clip", "create_hf"),
}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: ``@register_backbone("world:clip")`` over a ``factory(**kwargs) -> Backbone``."""
    return BACKBONES.register(name)


def _import_registering_modules() -> None:
    for module in _REGISTERING_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


BACKBONES: Registry[BackboneFactory] = Registry("backbone", populate=_import_registering_modules)


def list_backbones() -> list[str]:
    """Every registered name, then the patterns that load real checkpoints."""
    _import_registering_modules()
    return BACKBONES.names() + list(NAME_PATTERNS)


def create_backbone(name: str, **kwargs: Any) -> Backbone:
    """Load a backbone by name (see the module docstring for the name forms and keyword options).

    The backbone remembers the name and options it was built from (``extra["create_args"]``, what a prompt
    artifact stores to rebuild it) and hashes its weights as loaded, before any method can train them.
    """
    _import_registering_modules()
    options = dict(kwargs)
    if name in BACKBONES:
        backbone = BACKBONES.get(name)(**kwargs)
    else:
        prefix, separator, rest = name.partition(":")
        if not separator or prefix not in _LOADERS or not rest:
            raise unknown_name("backbone", name, list_backbones())
        module, function = _LOADERS[prefix]
        backbone = getattr(importlib.import_module(module), function)(rest, name, **kwargs)
    create_args = {"name": name, "options": {key: _jsonable(value) for key, value in options.items()}}
    backbone.extra.setdefault("create_args", create_args)
    backbone.weights_hash()
    return backbone


def _jsonable(value: Any) -> Any:
    """Options as a prompt config can store them (paths as strings)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


# ----- tiny random-init models (tests, examples) -----
def _register_tiny() -> None:
    from vlprompt.backbones import tiny

    entries: dict[str, BackboneFactory] = {
        "tiny:timm_vit": lambda seed=0, **kw: tiny.tiny_timm_vit("vit", seed=int(seed), **kw),
        "tiny:timm_mae": lambda seed=0, **kw: tiny.tiny_timm_vit("mae", seed=int(seed), **kw),
        "tiny:open_clip": lambda seed=0: tiny.tiny_open_clip(seed=int(seed)),
        "tiny:open_clip_custom_text": lambda seed=0, **kw: tiny.tiny_open_clip_custom_text(
            seed=int(seed), **kw
        ),
        "tiny:hf_clip": lambda seed=0: tiny.tiny_hf_clip(seed=int(seed)),
        # beyond OpenAI CLIP: EVA-CLIP, SigLIP, SigLIP 2 inside open_clip, and timm's EVA / SigLIP ViTs alone
        "tiny:open_clip_eva": lambda seed=0: tiny.tiny_open_clip_eva(seed=int(seed)),
        "tiny:open_clip_siglip": lambda seed=0: tiny.tiny_open_clip_siglip(seed=int(seed), version=1),
        "tiny:open_clip_siglip2": lambda seed=0: tiny.tiny_open_clip_siglip(seed=int(seed), version=2),
        "tiny:timm_eva": lambda seed=0: tiny.tiny_timm_eva(seed=int(seed)),
        "tiny:timm_siglip": lambda seed=0: tiny.tiny_timm_siglip(seed=int(seed)),
        "tiny:timm_swin": lambda seed=0, **kw: tiny.tiny_timm_swin(seed=int(seed), **kw),
        "tiny:timm_resnet": lambda seed=0, **kw: tiny.tiny_timm_convnet("resnet", seed=int(seed), **kw),
        "tiny:timm_convnext": lambda seed=0, **kw: tiny.tiny_timm_convnet("convnext", seed=int(seed), **kw),
    }
    for key, factory in entries.items():
        register_backbone(key)(factory)


_register_tiny()
