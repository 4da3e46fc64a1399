"""``open_clip:hf-hub:<owner>/<repo>``: an open_clip model repo, read from the local Hugging Face cache.

The repo's cached snapshot (open_clip_config.json + weights) is loaded as an open_clip model folder, so nothing
touches the network; only without a cached copy is the hub tried, and only when reachable and not offline.
"""
from __future__ import annotations

import os
from typing import Any

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.registry import (
    _cached_hf_file,
    _create_open_clip_dir,
    _hub_reachable,
    _missing_weights,
    _open_clip_tokenizer,
    _wrong_checkpoint,
)
from vlprompt.errors import VlpromptError

_HUB_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def create_open_clip_hub(spec: str, name: str, random_init: bool, **kwargs: Any) -> Backbone:
    """``open_clip:hf-hub:<repo>``: the repo's snapshot in the local HF cache is read as an open_clip model
    folder (no network); without one, the hub is tried only when reachable and offline mode is off."""
    import open_clip

    from vlprompt.backbones.open_clip import open_clip_preprocess, wrap_open_clip

    repo = spec[len("hf-hub:") :].strip("/")
    if repo.count("/") != 1:
        raise VlpromptError(
            f"Backbone '{name}': '{repo}' is not a Hugging Face repo id; write 'open_clip:hf-hub:<owner>/<name>', "
            "e.g. open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K."
        )
    config = _cached_hf_file(repo, ["open_clip_config.json"])
    weights = _cached_hf_file(repo, _HUB_WEIGHT_NAMES)
    if config is not None and (weights is not None or random_init):
        folder = os.path.dirname(config)
        if weights is not None and os.path.dirname(weights) != folder:
            raise VlpromptError(
                f"Backbone '{name}': the HF cache holds open_clip_config.json and the weights of '{repo}' from "
                "different revisions; load the model once more on a machine with network to refresh the cache."
            )
        return _create_open_clip_dir(f"local-dir:{folder}", name, random_init, **kwargs)
    how_local = f"an open_clip model folder: 'open_clip:local-dir:/path/to/folder' (a download of '{repo}')"
    if not _hub_reachable():
        raise _missing_weights(name, how_local, "random_init=true with the config in the cache")
    try:
        model = open_clip.create_model(spec, load_weights=not random_init, **kwargs)
    except OSError as error:
        raise _missing_weights(name, how_local, "random_init=true") from error
    except (RuntimeError, KeyError, AssertionError) as error:
        raise _wrong_checkpoint(name, repo, error) from error
    return wrap_open_clip(model.eval(), _open_clip_tokenizer(spec, name), open_clip_preprocess(model), name)
