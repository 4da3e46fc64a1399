"""save_pretrained / from_pretrained: a prompt as a self-describing folder that rebuilds backbone + method.

The folder is what ``vlprompt train`` writes into its run folder: ``prompts.safetensors`` (trained tensors),
``prompt_config.json`` (method, full method config, backbone spec + weights hash, class names, templates,
library version, tensor checksum) and a generated ``README.md``. Loading reads only safetensors and JSON.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlprompt.artifacts.card import write_model_card
from vlprompt.artifacts.checkpoint import load_prompts, read_prompt_meta, save_prompts, stored_backbone
from vlprompt.artifacts.files import PROMPTS_META_NAME
from vlprompt.core.errors import CheckpointError, VlpromptError

log = logging.getLogger(__name__)



def save_pretrained(method, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``method``'s trained tensors, prompt_config.json and a model card into ``folder``."""
    folder = Path(folder)
    if folder.suffix == ".safetensors":
        raise VlpromptError(f"save_pretrained writes a folder; '{folder}' looks like a file. Pass a folder path.")
    save_prompts(method, folder, extra=extra)
    write_model_card(folder)
    return folder


def _labels(meta: dict, folder: Path, classnames: Sequence[str] | None):
    from vlprompt.data.segmentation import label_space

    templates = meta.get("templates")
    groups = meta.get("template_groups") or {}
    if not templates:
        raise CheckpointError(
            f"'{folder / PROMPTS_META_NAME}' records no templates; every prompt config this vlprompt writes has "
            "them. The file is damaged: copy the folder again from where it was trained, or retrain."
        )
    if classnames is not None:
        classnames = [str(c) for c in classnames]
        dependent = meta.get("class_dependent") or []
        if dependent and classnames != list(meta.get("classnames", [])):
            raise CheckpointError(
                f"'{folder}' is a '{meta.get('method')}' prompt whose trained tensors ({', '.join(dependent)}) are "
                f"tied to its {len(meta.get('classnames', []))} training classes, so it cannot predict other class "
                "names. Drop the class-name override, or train an open-vocabulary method (coop, kgcoop, prograd, "
                "cocoop with shared context; or zeroshot) to name new classes."
            )
    return label_space(meta.get("task_type", "classification"), classnames or meta.get("classnames", []), templates,
                       groups, meta.get("task_fields") or {})


def _backbone(meta: dict, folder: Path):
    from vlprompt.backbones.registry import create_backbone

    stored = stored_backbone(meta)
    try:
        return create_backbone(stored["name"], **stored.get("options", {}))
    except VlpromptError as error:
        raise CheckpointError(
            f"Cannot rebuild the backbone of '{folder}' ('{stored['name']}'): {error} If its weights now live "
            "elsewhere, load them yourself and pass them: from_pretrained(path, backbone=create_backbone(...)) or "
            "--backbone NAME on the command line; the weights hash decides whether they fit."
        ) from None


def _current_options(method_name: str, options: dict, folder: Path) -> dict:
    """The stored method config minus fields this version's config class does not have (an option a later
    release dropped): said in a warning; the tensor shapes are still checked on load."""
    import dataclasses

    from vlprompt.methods import METHODS, import_all

    import_all()
    known = {f.name for f in dataclasses.fields(METHODS.get(method_name).config_class)}
    dropped = sorted(set(options) - known)
    if dropped:
        log.warning("'%s': ignoring stored %s option(s) %s, which this vlprompt version no longer has",
                    folder, method_name, ", ".join(dropped))
    return {k: v for k, v in options.items() if k in known}


def from_pretrained(path: str | Path, backbone: Any = None, classnames: Sequence[str] | None = None,
                    device: str | None = None):
    """Rebuild the method of a prompt folder (or run folder) with its trained tensors, in eval mode.

    ``backbone``: a loaded Backbone to reuse (several prompts on one backbone); None rebuilds it from the
    stored spec. Either way its weights hash must equal the stored one. ``classnames`` predicts other
    classes with an open-vocabulary prompt; refused when trained tensors depend on the class list.
    """
    from vlprompt.methods import create_method

    folder = Path(path)
    if folder.suffix == ".safetensors":
        folder = folder.parent
    if not folder.is_dir():
        raise CheckpointError(f"'{path}' is not a folder; pass a run folder or a save_pretrained folder.")
    meta = read_prompt_meta(folder)
    labels = _labels(meta, folder, classnames)
    if backbone is None:
        backbone = _backbone(meta, folder)
    options = _current_options(meta["method"], dict(meta.get("method_config") or {}), folder)
    method = create_method(meta["method"], backbone, labels, **options)
    meta = load_prompts(method, folder)
    method.pretrained_path = str(folder)
    method.pretrained_config = meta
    method.eval()
    if device is not None:
        from vlprompt.core.distributed import resolve_device

        method.to(resolve_device(device))
    log.info("loaded %s from %s (%s)", meta["method"], folder, PROMPTS_META_NAME)
    return method
