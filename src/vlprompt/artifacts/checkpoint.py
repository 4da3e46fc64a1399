"""Prompt-only checkpoints (safetensors + prompt_config.json) and the resume state of an interrupted run.

A prompt checkpoint holds only the trained tensors; the frozen backbone is never written. Its JSON
(``prompt_config.json``) records what is needed to rebuild the model and to refuse a mismatched load: library
version, method and its full config, the backbone's name and the hash of its weights, the label space, the
tensors' shapes and a checksum of the tensors themselves. Identity of the backbone is its weights hash, not its
name: a weights file moved to another path still loads, other weights under the same name do not. Folders
written by vlprompt 0.1.0 (``prompts.json``: no weights hash, checksum or templates to check a load by) are
refused with what to do.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlprompt import __version__
from vlprompt.artifacts.card import write_model_card
from vlprompt.artifacts.files import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LEGACY_META_NAME,
    PROMPTS_META_NAME,
    PROMPTS_NAME,
)
from vlprompt.core.errors import CheckpointError
from vlprompt.core.io import atomic_write, atomic_write_json, read_json

log = logging.getLogger(__name__)


def _paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, config) of a folder or of a .safetensors file (whose config is ``<stem>.json`` beside it,
    or the folder's prompt_config.json for a run folder's prompts.safetensors)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        folder_config = path.parent / PROMPTS_META_NAME
        if path.name == PROMPTS_NAME and folder_config.exists():
            return path, folder_config
        return path, path.with_suffix(".json")
    return path / PROMPTS_NAME, path / PROMPTS_META_NAME


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` (sorted by name): what prompt_config.json
    records so that a tensor file swapped in from another run is refused."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def backbone_spec(backbone) -> dict:
    """How to rebuild the backbone (name + options given to create_backbone) and its weights hash."""
    created = backbone.extra.get("create_args") or {"name": backbone.backbone_id, "options": {}}
    return {
        "id": backbone.backbone_id,
        "name": created["name"],
        "options": dict(created.get("options", {})),
        "weights_hash": backbone.weights_hash(),
    }


def prompt_config(method, tensors: dict[str, torch.Tensor], extra: dict | None = None) -> dict:
    labels = method.labels
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library": "vlprompt",
        "version": __version__,
        "method": method.method_name,
        "method_config": dataclasses.asdict(method.config),
        "backbone": backbone_spec(method.backbone),
        "classnames": list(labels.classnames),
        "templates": list(labels.templates),
        "template_groups": {k: list(v) for k, v in labels.template_groups.items()},
        "task_type": labels.task_type,
        "task_fields": labels.task_fields(),
        "shapes": {name: list(t.shape) for name, t in tensors.items()},
        "class_dependent": sorted(method.class_dependent_parameter_names()),
        "tensors_sha256": tensors_checksum(tensors),
        **(extra or {}),
    }


def save_prompts(method, path: str | Path, extra: dict | None = None) -> Path:
    """Write the method's trained tensors and prompt_config.json; ``path`` is a folder or a .safetensors file.
    In a folder, a model card (README.md) is written too unless the folder holds a README of its own."""
    weights_path, meta_path = _paths(path)
    tensors = {name: t.detach().cpu().contiguous() for name, t in method.trainable_state_dict().items()}
    meta = prompt_config(method, tensors, extra)
    atomic_write(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata={"method": meta["method"]}))
    atomic_write_json(meta_path, meta)
    if meta_path.name == PROMPTS_META_NAME:
        write_model_card(weights_path.parent)
    return weights_path


def read_prompt_meta(path: str | Path) -> dict:
    weights_path, meta_path = _paths(path)
    if not meta_path.exists() and (meta_path.parent / LEGACY_META_NAME).exists():
        raise CheckpointError(
            f"'{meta_path.parent}' holds {LEGACY_META_NAME}, the prompt config of vlprompt 0.1, which this release "
            "no longer reads: it records no weights hash, tensor checksum or templates to check a load against. "
            "Retrain with the run's config.json (`vlprompt train <config> --out NEW_FOLDER`), or keep using "
            "vlprompt 0.1 for this folder."
        )
    if not weights_path.exists() or not meta_path.exists():
        raise CheckpointError(
            f"No prompt checkpoint at '{path}': expected {weights_path.name} and {PROMPTS_META_NAME} there. "
            "Point to the run folder (or its .safetensors file) written by 'vlprompt train' or save_pretrained."
        )
    meta = read_json(meta_path, "the checkpoint is damaged; copy the folder again from where it was trained, or "
                                "retrain.", CheckpointError)
    if not isinstance(meta, dict) or "method" not in meta:
        raise CheckpointError(f"'{meta_path}' is not a vlprompt prompt config (no 'method' field).")
    return meta


def stored_backbone(meta: dict) -> dict:
    """The backbone record of a config: id, name and options to rebuild it, and the hash of its weights."""
    backbone = meta.get("backbone")
    if not isinstance(backbone, dict) or not backbone.get("weights_hash") or "name" not in backbone:
        raise CheckpointError(
            f"The prompt config's 'backbone' field is {backbone!r}; a prompt config records the backbone as "
            "{id, name, options, weights_hash}. The file is damaged or was not written by this vlprompt: copy the "
            "folder again from where it was trained, or retrain."
        )
    return backbone


def check_backbone(meta: dict, backbone, where: str | Path) -> None:
    """Refuse a backbone whose weights differ from the ones the prompts were trained on."""
    stored = stored_backbone(meta)
    actual = backbone.weights_hash()
    if stored["weights_hash"] != actual:
        raise CheckpointError(
            f"Checkpoint '{where}' was trained on backbone '{stored.get('id')}' with weights hash "
            f"{stored['weights_hash']}, but the backbone given now ('{backbone.backbone_id}') has weights hash "
            f"{actual}: other weights, so the prompts would not mean what they meant in training. Load the "
            "backbone the prompts were trained with (the same weights file, wherever it now lives)."
        )
    if stored.get("id") != backbone.backbone_id:
        log.info("backbone '%s' has the weights '%s' was trained with; loading", backbone.backbone_id, stored.get("id"))


def read_tensors(path: str | Path, meta: dict | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (safetensors: no pickle), verified against the recorded checksum."""
    weights_path, meta_path = _paths(path)
    meta = meta if meta is not None else read_prompt_meta(path)
    try:
        tensors = load_file(str(weights_path))
    except Exception as error:  # noqa: BLE001  (safetensors raises several types for damaged files)
        raise CheckpointError(f"Cannot read '{weights_path}' ({error}); the file is damaged or truncated.") from None
    expected = meta.get("tensors_sha256")
    if expected is not None and tensors_checksum(tensors) != expected:
        raise CheckpointError(
            f"'{weights_path}' does not match the checksum recorded in '{meta_path}': the tensor file was replaced "
            "(e.g. copied in from another run) or damaged after it was written. A checkpoint is its tensor file "
            "and its config together: copy both from the same run folder, or retrain."
        )
    if expected is None:
        log.warning("'%s' records no tensor checksum (written by vlprompt 0.1); loading it unverified", meta_path)
    return tensors


def load_prompts(method, path: str | Path) -> dict:
    """Load trained tensors into ``method`` after checking they belong to it.

    Refused: another method, other backbone weights (by hash), a tensor file that fails its checksum, different
    tensor shapes (e.g. another width), or a different class list when the checkpoint holds class-dependent
    tensors (a head, class-specific context). Class-agnostic prompts (shared context, visual prompts without their
    head) load onto a new class list: that is how base-to-new evaluation works.
    """
    weights_path, _ = _paths(path)
    meta = read_prompt_meta(path)
    if meta.get("method") != method.method_name:
        raise CheckpointError(
            f"Checkpoint '{weights_path}' was trained with method '{meta.get('method')}', not "
            f"'{method.method_name}'. Create the method it was trained with."
        )
    tensors = read_tensors(path, meta)
    method.resize_for_checkpoint({name: tuple(t.shape) for name, t in tensors.items()})
    own = method.trained_tensors()
    class_dependent = set(meta.get("class_dependent", []))
    same_classes = list(meta.get("classnames", [])) == list(method.labels.classnames)
    for name, tensor in tensors.items():
        if name not in own:
            raise CheckpointError(
                f"Checkpoint '{weights_path}' holds tensor '{name}' that this '{method.method_name}' model does not "
                "have: it was built with other method options. Use the options saved in its JSON (method_config)."
            )
        if name in class_dependent and not same_classes:
            raise CheckpointError(
                f"Checkpoint '{weights_path}' holds class-dependent tensor '{name}' trained for "
                f"{len(meta.get('classnames', []))} classes {meta.get('classnames', [])[:5]}..., which differ from "
                f"the {len(method.labels.classnames)} classes given now. Evaluate it on its own class list, or use "
                "a class-agnostic method (shared context) for new classes."
            )
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"Checkpoint '{weights_path}': tensor '{name}' has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(own[name].shape)} (another backbone width, prompt length or class count)."
            )
    check_backbone(meta, method.backbone, weights_path)  # after the shapes: a width mismatch says so
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor.to(own[name].device, own[name].dtype))
    return meta
