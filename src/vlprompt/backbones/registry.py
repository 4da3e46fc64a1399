"""Backbones by name: registered names ("world:clip", "tiny:...") and the library patterns below.

- ``timm:<arch>[.<tag>]``          a timm ViT; weights from ``weights=PATH``, the local HF / torch-hub cache, or
                                   the hub when reachable; ``pretrained=False`` or ``random_init=True`` for random init.
- ``open_clip:<arch>@<pretrained>`` an open_clip CLIP; ``<pretrained>`` is a local file or a tag found in the cache;
                                   ``open_clip:local-dir:<folder>`` reads an open_clip model folder;
                                   ``open_clip:hf-hub:<repo>`` a model repo (open_clip_config.json + weights) from
                                   the local HF cache, or the hub when reachable.
- ``hf:<repo-or-path>``            a transformers CLIPModel from a local folder or the HF cache.

Loading never waits on an unreachable network: the cache is searched first, offline mode (HF_HUB_OFFLINE=1) is
honoured, and the hub is tried only after a short reachability probe; every failure becomes one VlpromptError
that says how to provide the weights.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

from vlprompt.backbones.base import Backbone, PreprocessConfig
from vlprompt.errors import CheckpointError, VlpromptError, unknown_name
from vlprompt.registry import Registry

log = logging.getLogger(__name__)

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
_HUB_HOST = "huggingface.co"


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
        loaders = {"timm": _create_timm, "open_clip": _create_open_clip, "hf": _create_hf}
        if not separator or prefix not in loaders or not rest:
            raise unknown_name("backbone", name, list_backbones())
        backbone = loaders[prefix](rest, name, **kwargs)
    create_args = {"name": name, "options": {key: _jsonable(value) for key, value in options.items()}}
    backbone.extra.setdefault("create_args", create_args)
    backbone.weights_hash()
    return backbone


def _jsonable(value: Any) -> Any:
    """Options as a prompt config can store them (paths as strings)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


# ----- shared helpers -----
def _as_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise VlpromptError(f"Backbone option {field}={value!r} is not a boolean; use true or false.")


def _offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe so that a machine without network fails in seconds instead of retrying for a minute."""
    if _offline():
        return False
    try:
        with socket.create_connection((_HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _close_names(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def _missing_weights(name: str, how_local: str, random_hint: str) -> VlpromptError:
    return VlpromptError(
        f"No weights for backbone '{name}' on this machine, and the model hub is unreachable or offline mode is on. "
        f"Provide them in one of three ways: {how_local}; or pre-populate the Hugging Face cache (HF_HOME) on a "
        f"machine with network, e.g. by loading the model once there, and copy it here; or, for a random-init "
        f"model (tests, speed checks), pass {random_hint}."
    )


def _wrong_checkpoint(name: str, source: str, error: Exception) -> CheckpointError:
    detail = str(error).strip().splitlines()
    summary = " ".join(line.strip() for line in detail[:3])[:400]
    return CheckpointError(
        f"The weights in '{source}' do not fit backbone '{name}': {summary} ... Check that the file was saved from "
        "this architecture with the same size options (img_size, patch_size, embed_dim, depth, ...) and pass those "
        "options as keyword arguments when they differ from the architecture's defaults."
    )


def _cached_hf_file(repo_id: str, filenames: Iterable[str]) -> str | None:
    """A file of ``repo_id`` already in the local HF cache (no network access)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _cached_url_file(url: str, directory: str) -> str | None:
    path = os.path.join(directory, os.path.basename(url))
    return path if url and os.path.isfile(path) else None


# ----- timm -----
def _create_timm(spec: str, name: str, **kwargs: Any) -> Backbone:
    import timm

    from vlprompt.backbones.timm_vit import wrap_timm_vit

    weights = kwargs.pop("weights", None)
    random_init = _as_bool(kwargs.pop("random_init", False), "random_init")
    pretrained = _as_bool(kwargs.pop("pretrained", True), "pretrained") and not random_init
    arch, _, tag = spec.partition(".")
    if not timm.is_model(arch):
        raise VlpromptError(
            f"timm has no architecture '{arch}' (from backbone '{name}').{_close_names(arch, timm.list_models())} "
            "timm.list_models('vit_*') lists the ViTs."
        )
    if tag and spec not in timm.list_pretrained(f"{arch}.*"):
        raise VlpromptError(
            f"timm has no pretrained tag '{tag}' for '{arch}'."
            f"{_close_names(spec, timm.list_pretrained(f'{arch}.*'))} Known tags: "
            f"{', '.join(timm.list_pretrained(f'{arch}.*')) or '(none)'}."
        )
    kind = kwargs.pop("kind", "mae" if "mae" in tag else "vit")
    kwargs.setdefault("num_classes", 0)
    if not pretrained and weights is None:
        model = timm.create_model(spec, pretrained=False, **kwargs)
        return wrap_timm_vit(model.eval(), backbone_id=f"{name}#random", kind=kind)
    if weights is None:
        weights = _find_timm_weights(spec)
    if weights is not None:
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise VlpromptError(
                f"Backbone '{name}': weights file '{weights}' does not exist; pass an existing file."
            )
        model = _load_timm_file(spec, name, weights, kwargs)
    else:
        if not _hub_reachable():
            raise _missing_weights(
                name,
                "a local file with weights=PATH (.safetensors / .pth / .npz)",
                "pretrained=false or random_init=true",
            )
        try:
            model = timm.create_model(spec, pretrained=True, **kwargs)
        except (OSError, RuntimeError) as error:
            raise _missing_weights(
                name,
                "a local file with weights=PATH (.safetensors / .pth / .npz)",
                "pretrained=false or random_init=true",
            ) from error
    return wrap_timm_vit(model.eval(), backbone_id=name, kind=kind)


def _load_timm_file(spec: str, name: str, weights: str, kwargs: dict) -> Any:
    """Build the architecture, then load the file through timm (its checkpoint filter resizes position
    embeddings and converts layouts) and refuse any file that leaves a non-classifier weight unloaded: timm
    itself loads non-strictly whenever the classifier size differs, which would silently keep random weights."""
    import timm
    from timm.models import load_pretrained
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = timm.create_model(spec, pretrained=False, **kwargs)
    classifier = model.pretrained_cfg.get("classifier", "head")
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    report: dict[str, list[str]] = {}

    def record(module: Any, incompatible: Any) -> None:
        report["missing"] = list(incompatible.missing_keys)
        report["unexpected"] = list(incompatible.unexpected_keys)

    handle = model.register_load_state_dict_post_hook(record)
    try:
        load_pretrained(
            model,
            pretrained_cfg={**model.pretrained_cfg, "file": weights, "custom_load": weights.endswith(".npz")},
            num_classes=model.num_classes,
            filter_fn=checkpoint_filter_fn,
            strict=False,
        )
    except (RuntimeError, KeyError, ValueError, AssertionError) as error:
        raise _wrong_checkpoint(name, weights, error) from error
    finally:
        handle.remove()
    missing = [k for k in report.get("missing", []) if not k.startswith(classifiers)]
    unexpected = [k for k in report.get("unexpected", []) if not k.startswith(classifiers)]
    if missing or unexpected:
        detail = (f"missing {', '.join(missing[:6])}" if missing else "") + (
            f"{'; ' if missing else ''}unexpected {', '.join(unexpected[:6])}" if unexpected else ""
        )
        raise _wrong_checkpoint(name, weights, RuntimeError(detail))
    return model


def _find_timm_weights(spec: str) -> str | None:
    """The checkpoint of a timm pretrained tag in the local HF or torch-hub cache."""
    import timm
    import torch

    config = timm.models.get_pretrained_cfg(spec)
    if config is None:
        return None
    if config.hf_hub_id:
        names = (
            [config.hf_hub_filename] if config.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        )
        found = _cached_hf_file(config.hf_hub_id, names)
        if found:
            return found
    if config.url:
        return _cached_url_file(config.url, os.path.join(torch.hub.get_dir(), "checkpoints"))
    return None


# ----- open_clip -----
def _create_open_clip(spec: str, name: str, **kwargs: Any) -> Backbone:
    import open_clip

    from vlprompt.backbones.open_clip import open_clip_preprocess, wrap_open_clip

    random_init = _as_bool(kwargs.pop("random_init", False), "random_init")
    if spec.startswith("local-dir:"):
        return _create_open_clip_dir(spec, name, random_init, **kwargs)
    if spec.startswith("hf-hub:"):
        from vlprompt.backbones.hf_hub import create_open_clip_hub

        return create_open_clip_hub(spec, name, random_init, **kwargs)
    arch, _, pretrained = spec.partition("@")
    if arch not in open_clip.list_models():
        raise VlpromptError(
            f"open_clip has no architecture '{arch}' (from backbone '{name}').{_close_names(arch, open_clip.list_models())}"
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
            model.eval(), _open_clip_tokenizer(arch, name), open_clip_preprocess(model), name
        )
    tag_config: dict = {}
    if os.path.isfile(pretrained):
        source = pretrained
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            raise VlpromptError(
                f"'{pretrained}' is neither a file nor an open_clip pretrained tag of '{arch}'."
                f"{_close_names(pretrained, tags)} Known tags: {', '.join(tags) or '(none)'}."
            )
        tag_config = open_clip.get_pretrained_cfg(arch, pretrained)
        source = _find_open_clip_weights(tag_config)
        if source is None:
            if not _hub_reachable():
                raise _missing_weights(
                    name, f"a local file: 'open_clip:{arch}@/path/to/weights.bin'", f"'open_clip:{arch}@none'"
                )
            source = pretrained
    try:
        model = open_clip.create_model(arch, pretrained=source, **kwargs)
    except (RuntimeError, KeyError, AssertionError) as error:  # open_clip asserts on resized embeddings
        raise _wrong_checkpoint(name, source, error) from error
    except OSError as error:
        raise _missing_weights(
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
    return wrap_open_clip(model.eval(), _open_clip_tokenizer(arch, name), preprocess, name)


def _create_open_clip_dir(spec: str, name: str, random_init: bool, **kwargs: Any) -> Backbone:
    """``open_clip:local-dir:<folder>``: a folder with open_clip_config.json and a weights file, as open_clip
    itself reads it (config, preprocessing and tokenizer all come from the folder)."""
    import open_clip

    from vlprompt.backbones.open_clip import open_clip_preprocess, wrap_open_clip

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
        raise _wrong_checkpoint(name, folder, error) from error
    return wrap_open_clip(model.eval(), _open_clip_tokenizer(spec, name), open_clip_preprocess(model), name)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")
def _find_open_clip_weights(tag_config: dict) -> str | None:
    hub = tag_config.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        found = _cached_hf_file(repo_id, names)
        if found:
            return found
    return _cached_url_file(tag_config.get("url", ""), os.path.expanduser("~/.cache/clip"))


def _open_clip_tokenizer(arch: str, name: str) -> Any:
    import open_clip

    try:
        return open_clip.get_tokenizer(arch)
    except OSError as error:
        raise VlpromptError(
            f"Backbone '{name}' uses a Hugging Face tokenizer that is not in the local cache; load it once on a "
            "machine with network (open_clip.get_tokenizer) and copy the HF cache here."
        ) from error


# ----- transformers -----
def _create_hf(spec: str, name: str, **kwargs: Any) -> Backbone:
    from transformers import AutoConfig, AutoTokenizer, CLIPImageProcessor, CLIPModel

    from vlprompt.backbones.hf_clip import wrap_hf_clip

    random_init = _as_bool(kwargs.pop("random_init", False), "random_init")
    local_only = os.path.isdir(spec) or not _hub_reachable()
    how_local = "a local folder saved with save_pretrained: 'hf:/path/to/folder'"
    try:
        config = AutoConfig.from_pretrained(spec, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=local_only)
    except OSError as error:
        raise _missing_weights(name, how_local, "random_init=true with a local config folder") from error
    if getattr(config, "model_type", None) != "clip":
        raise VlpromptError(
            f"Backbone '{name}' is a transformers '{getattr(config, 'model_type', '?')}' model; 'hf:' loads CLIP "
            "models (model_type 'clip')."
        )
    try:
        if random_init:
            model = CLIPModel(config)
        else:
            model = CLIPModel.from_pretrained(spec, local_files_only=local_only, **kwargs)
    except OSError as error:
        raise _missing_weights(name, how_local, "random_init=true") from error
    except (RuntimeError, ValueError) as error:
        raise _wrong_checkpoint(name, spec, error) from error
    try:
        image_processor = CLIPImageProcessor.from_pretrained(spec, local_files_only=local_only)
    except OSError:
        log.info("No image processor config for %s; using CLIP's default preprocessing", name)
        image_processor = None
    return wrap_hf_clip(model.eval(), tokenizer, name, image_processor=image_processor)


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
    }
    for key, factory in entries.items():
        register_backbone(key)(factory)


_register_tiny()
