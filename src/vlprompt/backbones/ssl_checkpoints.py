"""The self-supervised ViT checkpoints the VPT paper used, loaded into timm ViTs by key mapping.

- MAE (facebookresearch/mae, e.g. ``mae_pretrain_vit_base.pth``): ``{"model": {...}}`` with timm's key names;
  pre-training files may also hold the decoder (``decoder_*``) and ``mask_token``, which the encoder drops.
  VPT reads MAE out as its fine-tuning does (KMnP/vpt ``vit_prompt/vit_mae.py``, ``global_pool=True``): the mean
  of the tokens after the class token through a fresh LayerNorm ``fc_norm`` (weight 1, bias 0), with no final
  ``norm``. A timm ViT built with ``global_pool='avg'`` has exactly that shape (``norm`` is an Identity, ``fc_norm``
  a LayerNorm), so the file's ``norm.*`` is dropped and ``fc_norm`` keeps its fresh init unless the file has one.
- MoCo v3 (facebookresearch/moco-v3, e.g. ``vit-b-300ep.pth.tar``): ``{"state_dict": {...}}`` with keys under
  ``module.base_encoder.`` (the momentum encoder and predictor are dropped); the linear-probe files VPT loads
  (``mocov3_linear-vit-b-300ep.pth.tar``) use ``module.`` only. The projection / classifier ``head`` is dropped;
  the readout is the class token after the final norm (KMnP/vpt ``vit_prompt/vit_moco.py``).

Files are read with ``torch.load(weights_only=True)`` only: tensors and plain containers, never arbitrary pickle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from vlprompt.core.errors import VlpromptError

CHECKPOINT_FORMATS = ("timm", "mae", "moco_v3")
_PICKLE_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt")
_MOCO_PREFIXES = ("module.base_encoder.", "module.")


def _read(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or ValueError by version
        raise VlpromptError(
            f"Cannot read '{path}' as a tensors-only checkpoint (torch.load with weights_only=True): {error}. "
            "vlprompt never unpickles arbitrary objects; re-save the weights as a plain dict of tensors or as "
            ".safetensors."
        ) from error


def _tensors(mapping: Mapping) -> dict[str, torch.Tensor]:
    return {key: value for key, value in mapping.items() if isinstance(value, torch.Tensor)}


def _sample_keys(mapping: Mapping, count: int = 8) -> str:
    keys = list(mapping)
    return ", ".join(map(str, keys[:count])) + (f" ... ({len(keys)} keys)" if len(keys) > count else "")


def detect_format(checkpoint: Any) -> str:
    """'mae' (a ``model`` dict), 'moco_v3' (a ``state_dict`` dict under ``module.``) or 'timm' (a flat dict of
    tensors with timm's names, or a timm training checkpoint); anything else is an unknown layout, named by the
    keys it has. A DeiT file ({'model': ...}) reads as 'mae': the same mapping timm applies to it."""
    if not isinstance(checkpoint, Mapping):
        raise VlpromptError(f"The checkpoint holds a {type(checkpoint).__name__}, not a dict of tensors.")
    if isinstance(checkpoint.get("model"), Mapping):
        return "mae"
    inner = checkpoint.get("state_dict")
    if isinstance(inner, Mapping) and any(str(key).startswith("module.") for key in inner):
        return "moco_v3"
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return "timm"
    if any(isinstance(checkpoint.get(key), Mapping) for key in ("state_dict", "state_dict_ema", "model_ema")):
        return "timm"  # a timm training checkpoint: timm's own loader reads these entries
    raise VlpromptError(
        f"Unknown checkpoint layout: top-level keys {_sample_keys(checkpoint)}. vlprompt reads MAE files "
        "({'model': {...}}), MoCo v3 files ({'state_dict': {'module.base_encoder.…': …}}) and flat timm state "
        "dicts; pass checkpoint_format=mae|moco_v3|timm if the file is one of those under other keys."
    )


def mae_state_dict(checkpoint: Mapping, model: nn.Module) -> dict[str, torch.Tensor]:
    """An MAE file's encoder in timm's names, fitted to ``model``'s readout (see the module docstring)."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise VlpromptError(f"This MAE checkpoint's 'model' entry is a {type(state).__name__}, not a dict.")
    state = {
        key: value
        for key, value in _tensors(state).items()
        if not key.startswith(("decoder", "mask_token", "head."))
    }
    if isinstance(model.norm, nn.Identity):  # mean readout through fc_norm, as MAE fine-tuning and VPT
        state = {key: value for key, value in state.items() if not key.startswith("norm.")}
    return state


def moco_v3_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """A MoCo v3 file's base encoder in timm's names (without its projection head)."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise VlpromptError(f"This MoCo v3 checkpoint's 'state_dict' entry is a {type(state).__name__}.")
    state = _tensors(state)
    prefix = next((p for p in _MOCO_PREFIXES if any(key.startswith(p) for key in state)), None)
    if prefix is None:
        raise VlpromptError(
            f"This MoCo v3 checkpoint has no key under 'module.base_encoder.' or 'module.' (keys: "
            f"{_sample_keys(state)})."
        )
    mapped = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    return {key: value for key, value in mapped.items() if not key.startswith("head.")}


def ssl_state_dict(
    path: str | os.PathLike, model: nn.Module, checkpoint_format: str | None = None
) -> tuple[dict[str, torch.Tensor], str] | None:
    """The file at ``path`` mapped to ``model``'s keys, with its format; None for a plain timm file (timm's
    own loader reads those, safetensors and npz included)."""
    path = os.fspath(path)
    if checkpoint_format is not None and checkpoint_format not in CHECKPOINT_FORMATS:
        raise VlpromptError(
            f"checkpoint_format={checkpoint_format!r} is not known; use one of {', '.join(CHECKPOINT_FORMATS)} "
            "or leave it unset to detect it."
        )
    if checkpoint_format == "timm" or not path.endswith(_PICKLE_SUFFIXES):
        if checkpoint_format in ("mae", "moco_v3"):
            raise VlpromptError(
                f"checkpoint_format={checkpoint_format} expects the official .pth / .pth.tar file; '{path}' is "
                "not one. Leave checkpoint_format unset for timm files."
            )
        return None
    checkpoint = _read(path)
    found = detect_format(checkpoint)
    chosen = checkpoint_format or found
    if chosen == "timm":
        return None
    if checkpoint_format is not None and found not in (checkpoint_format, "timm"):
        raise VlpromptError(
            f"'{path}' looks like a {found} checkpoint (top-level keys {_sample_keys(checkpoint)}), not "
            f"{checkpoint_format}; fix checkpoint_format or leave it unset."
        )
    state = mae_state_dict(checkpoint, model) if chosen == "mae" else moco_v3_state_dict(checkpoint)
    return state, chosen


def load_ssl_checkpoint(
    model: nn.Module,
    name: str,
    path: str,
    checkpoint_format: str | None,
    filter_fn: Callable[[dict, nn.Module], dict] | None,
) -> str | None:
    """Load an MAE / MoCo v3 file into ``model`` (through timm's checkpoint filter, which resizes position
    embeddings); returns the format, or None when the file is a plain timm one for timm's loader. Any encoder
    weight left unloaded, or a key the model lacks, is an error naming them."""
    mapped = ssl_state_dict(path, model, checkpoint_format)
    if mapped is None:
        return None
    state, chosen = mapped
    if filter_fn is not None:
        state = filter_fn(state, model)
    result = model.load_state_dict(state, strict=False)
    fresh = ("head.", "fc_norm.") if chosen == "mae" else ("head.",)
    missing = [key for key in result.missing_keys if not key.startswith(fresh)]
    if missing or result.unexpected_keys:
        raise VlpromptError(
            f"Backbone '{name}': the {chosen} checkpoint '{path}' does not fit this architecture (missing "
            f"{', '.join(missing[:6]) or 'none'}; unexpected {', '.join(result.unexpected_keys[:6]) or 'none'}). "
            "Check that the file and the timm architecture are the same size (e.g. ViT-B/16 with "
            "vit_base_patch16_224)."
        )
    return chosen
