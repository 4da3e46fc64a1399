"""Loading open_clip models by name: ``open_clip:<arch>@<pretrained>``, ``open_clip:local-dir:<folder>`` and
``open_clip:hf-hub:<owner>/<repo>`` (the adapter itself is open_clip.py, kept apart to stay one job per file).

An hf-hub repo's cached snapshot (open_clip_config.json + weights) is loaded as an open_clip model folder, so nothing
touches the network; only without a cached copy is the hub tried, and only when reachable and not offline.
"""

from __future__ import annotations

import os
from typing import Any

from vlprompt.backbones.base import Backbone, PreprocessConfig
from vlprompt.backbones.hub import cached_hf_file, cached_url_file, hub_reachable
from vlprompt.backbones.loading import as_bool, close_names, missing_weights, wrong_checkpoint
from vlprompt.backbones.open_clip import open_clip_preprocess, wrap_open_clip
from vlprompt.core.errors import VlpromptError

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")


def create_open_clip(spec: str, name: str, **kwargs: Any) -> Backbone:
    """``open_clip:<arch>@<pretrained>`` (a local file, a cached tag, or ``none``), ``open_clip:local-dir:<folder>``
    or ``open_clip:hf-hub:<repo>``."""
    import open_clip

    random_init = as_bool(kwargs.pop("random_init", False), "random_init")
    tokenizer_folder = kwargs.pop("tokenizer", None)
    if spec.startswith("local-dir:"):
        return create_open_clip_dir(spec, name, random_init, **kwargs)
    if spec.startswith("hf-hub:"):
        return create_open_clip_hub(spec, name, random_init, **kwargs)
    arch, _, pretrained = spec.partition("@")
    if arch not in open_clip.list_models():
        raise VlpromptError(
            f"open_clip has no architecture '{arch}' (from backbone '{name}').{close_names(arch, open_clip.list_models())}"
            " open_clip.list_models() lists them."
        )
    if not pretrained and not random_init:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise VlpromptError(
            f"Backbone '{name}' names no weights; write 'open_clip:{arch}@<pretrained>' with a local file or one of "
            f"the tags {', '.join(tags) or '(none)'}, or 'open_clip:{arch}@none' for a random-init model."
        )
    if random_init or pretrained.lower() in ("none", "random"):
        model = open_clip.create_model(arch, pretrained=None, **kwargs)
        return wrap_open_clip(
            model.eval(), open_clip_tokenizer(arch, name, tokenizer_folder), open_clip_preprocess(model), name
        )
    tag_config: dict = {}
    if os.path.isfile(pretrained):
        source = pretrained
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            raise VlpromptError(
                f"'{pretrained}' is neither a file nor an open_clip pretrained tag of '{arch}'."
                f"{close_names(pretrained, tags)} Known tags: {', '.join(tags) or '(none)'}."
            )
        tag_config = open_clip.get_pretrained_cfg(arch, pretrained)
        source = _find_open_clip_weights(tag_config)
        if source is None:
            if not hub_reachable():
                raise missing_weights(
                    name, f"a local file: 'open_clip:{arch}@/path/to/weights.bin'", f"'open_clip:{arch}@none'"
                )
            source = pretrained
    try:
        model = open_clip.create_model(arch, pretrained=source, **kwargs)
    except (RuntimeError, KeyError, AssertionError) as error:  # open_clip asserts on resized embeddings
        raise wrong_checkpoint(name, source, error) from error
    except OSError as error:
        raise missing_weights(
            name, f"a local file: 'open_clip:{arch}@/path/to/weights.bin'", f"'open_clip:{arch}@none'"
        ) from error
    preprocess = open_clip_preprocess(model)
    if tag_config:
        preprocess = PreprocessConfig(
            image_size=preprocess.image_size,
            mean=tuple(tag_config.get("mean", preprocess.mean)),
            std=tuple(tag_config.get("std", preprocess.std)),
            interpolation=tag_config.get("interpolation", preprocess.interpolation),
            crop_pct=preprocess.crop_pct,
        )
    return wrap_open_clip(model.eval(), open_clip_tokenizer(arch, name, tokenizer_folder), preprocess, name)


def create_open_clip_dir(spec: str, name: str, random_init: bool, **kwargs: Any) -> Backbone:
    """``open_clip:local-dir:<folder>``: a folder with open_clip_config.json and a weights file, as open_clip
    itself reads it (config, preprocessing and tokenizer all come from the folder)."""
    import open_clip

    folder = spec[len("local-dir:") :]
    if not os.path.isfile(os.path.join(folder, "open_clip_config.json")):
        raise VlpromptError(
            f"Backbone '{name}': '{folder}' is not an open_clip model folder (no open_clip_config.json). Point "
            "'open_clip:local-dir:' at a folder holding open_clip_config.json and the weights file."
        )
    if not random_init and not any(
        os.path.isfile(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(_WEIGHT_SUFFIXES)
    ):
        # open_clip only warns and keeps random weights when the folder has none
        raise VlpromptError(
            f"Backbone '{name}': '{folder}' has an open_clip_config.json but no weights file "
            f"({', '.join(_WEIGHT_SUFFIXES)}). Put the weights beside the config, or pass random_init=true."
        )
    try:
        model = open_clip.create_model(spec, load_weights=not random_init, **kwargs)
    except (RuntimeError, KeyError, AssertionError) as error:
        raise wrong_checkpoint(name, folder, error) from error
    return wrap_open_clip(model.eval(), open_clip_tokenizer(spec, name), open_clip_preprocess(model), name)


def _find_open_clip_weights(tag_config: dict) -> str | None:
    hub = tag_config.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        found = cached_hf_file(repo_id, names)
        if found:
            return found
    return cached_url_file(tag_config.get("url", ""), os.path.expanduser("~/.cache/clip"))


def open_clip_tokenizer(arch: str, name: str, folder: str | None = None) -> Any:
    """The model's tokenizer, offline: open_clip's BPE (shipped in the package) or a Hugging Face tokenizer
    (SigLIP's SentencePiece, SigLIP 2's Gemma) from ``folder`` (backbone option ``tokenizer=PATH``) or the local
    HF cache; never downloaded."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    text_cfg = (open_clip.get_model_config(arch) or {}).get("text_cfg", {}) if ":" not in arch else {}
    if folder is not None:
        if not os.path.isdir(folder):
            raise VlpromptError(
                f"Backbone '{name}': tokenizer folder '{folder}' does not exist; point tokenizer= at a folder "
                "holding the tokenizer files (tokenizer.json / tokenizer_config.json, as save_pretrained writes)."
            )
        try:
            return HFTokenizer(
                folder,
                context_length=text_cfg.get("context_length", 77),
                tokenizer_mode=text_cfg.get("tokenizer_mode"),
                local_files_only=True,
                **text_cfg.get("tokenizer_kwargs", {}),
            )
        except (OSError, ValueError) as error:
            raise VlpromptError(
                f"Backbone '{name}': '{folder}' is not a Hugging Face tokenizer folder ({error}); save one there "
                "with tokenizer.save_pretrained(folder)."
            ) from error
    hf_name = text_cfg.get("hf_tokenizer_name", "")
    try:
        # the cache only: transformers would otherwise reach for the hub
        return open_clip.get_tokenizer(arch, **({"local_files_only": True} if hf_name else {}))
    except OSError as error:
        raise VlpromptError(
            f"Backbone '{name}' uses the Hugging Face tokenizer '{hf_name or arch}', which is not in the local "
            "cache and is never downloaded here. Pass tokenizer=/path/to/folder (a copy of that tokenizer, saved "
            "with save_pretrained), or load it once on a machine with network (open_clip.get_tokenizer) and copy "
            "the HF cache (~/.cache/huggingface) here."
        ) from error


_HUB_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def create_open_clip_hub(spec: str, name: str, random_init: bool, **kwargs: Any) -> Backbone:
    """``open_clip:hf-hub:<repo>``: the repo's snapshot in the local HF cache is read as an open_clip model
    folder (no network); without one, the hub is tried only when reachable and offline mode is off."""
    import open_clip

    repo = spec[len("hf-hub:") :].strip("/")
    if repo.count("/") != 1:
        raise VlpromptError(
            f"Backbone '{name}': '{repo}' is not a Hugging Face repo id; write 'open_clip:hf-hub:<owner>/<name>', "
            "e.g. open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K."
        )
    config = cached_hf_file(repo, ["open_clip_config.json"])
    weights = cached_hf_file(repo, _HUB_WEIGHT_NAMES)
    if config is not None and (weights is not None or random_init):
        folder = os.path.dirname(config)
        if weights is not None and os.path.dirname(weights) != folder:
            raise VlpromptError(
                f"Backbone '{name}': the HF cache holds open_clip_config.json and the weights of '{repo}' from "
                "different revisions; load the model once more on a machine with network to refresh the cache."
            )
        return create_open_clip_dir(f"local-dir:{folder}", name, random_init, **kwargs)
    how_local = f"an open_clip model folder: 'open_clip:local-dir:/path/to/folder' (a download of '{repo}')"
    if not hub_reachable():
        raise missing_weights(name, how_local, "random_init=true with the config in the cache")
    try:
        model = open_clip.create_model(spec, load_weights=not random_init, **kwargs)
    except OSError as error:
        raise missing_weights(name, how_local, "random_init=true") from error
    except (RuntimeError, KeyError, AssertionError) as error:
        raise wrong_checkpoint(name, repo, error) from error
    return wrap_open_clip(model.eval(), open_clip_tokenizer(spec, name), open_clip_preprocess(model), name)
