"""Prompt-only checkpoints (safetensors + JSON) and the resume state of an interrupted run.

A prompt checkpoint holds only the trained tensors; the frozen backbone is never written. Its JSON records
what is needed to refuse a mismatched load: library version, method, backbone id, class names, shapes.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlprompt import __version__
from vlprompt.errors import CheckpointError
from vlprompt.io_utils import atomic_write, atomic_write_json
from vlprompt.run_dir import PROMPTS_META_NAME as META_NAME
from vlprompt.run_dir import PROMPTS_NAME as WEIGHTS_NAME


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    return path / WEIGHTS_NAME, path / META_NAME


def save_prompts(method, path: str | Path, extra: dict | None = None) -> Path:
    """Write the method's trained tensors and their metadata; ``path`` is a folder or a .safetensors file."""
    weights_path, meta_path = _paths(path)
    tensors = {name: t.detach().cpu().contiguous() for name, t in method.trainable_state_dict().items()}
    meta = {
        "library": "vlprompt",
        "version": __version__,
        "method": method.method_name,
        "method_config": dataclasses.asdict(method.config),
        "backbone": method.backbone.backbone_id,
        "classnames": list(method.labels.classnames),
        "shapes": {name: list(t.shape) for name, t in tensors.items()},
        "class_dependent": sorted(method.class_dependent_parameter_names()),
        **(extra or {}),
    }
    atomic_write(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata={"method": meta["method"]}))
    atomic_write_json(meta_path, meta)
    return weights_path


def read_prompt_meta(path: str | Path) -> dict:
    weights_path, meta_path = _paths(path)
    if not weights_path.exists() or not meta_path.exists():
        raise CheckpointError(
            f"No prompt checkpoint at '{path}': expected {weights_path.name} and {meta_path.name} there. "
            "Point to the run folder (or its .safetensors file) written by 'vlprompt train'."
        )
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"'{meta_path}' is not valid JSON ({error}); the checkpoint is damaged.") from None


def load_prompts(method, path: str | Path) -> dict:
    """Load trained tensors into ``method`` after checking they belong to it.

    Refused: another method, another backbone, different tensor shapes (e.g. another width), or a different
    class list when the checkpoint holds class-dependent tensors (a head, class-specific context). Class-agnostic
    prompts (shared context, visual prompts without their head) load onto a new class list: that is how
    base-to-new evaluation works.
    """
    weights_path, _ = _paths(path)
    meta = read_prompt_meta(path)
    if meta.get("method") != method.method_name:
        raise CheckpointError(
            f"Checkpoint '{weights_path}' was trained with method '{meta.get('method')}', not "
            f"'{method.method_name}'. Create the method it was trained with."
        )
    if meta.get("backbone") != method.backbone.backbone_id:
        raise CheckpointError(
            f"Checkpoint '{weights_path}' was trained on backbone '{meta.get('backbone')}', but the model is built "
            f"on '{method.backbone.backbone_id}'. Prompts only fit the backbone they were trained with; load that "
            "backbone instead."
        )
    try:
        tensors = load_file(str(weights_path))
    except Exception as error:  # noqa: BLE001  (safetensors raises several types for damaged files)
        raise CheckpointError(f"Cannot read '{weights_path}' ({error}); the file is damaged or truncated.") from None
    if hasattr(method, "resize_for_checkpoint"):  # tensors sized by the training data (Tip-Adapter's cache)
        method.resize_for_checkpoint({name: tuple(t.shape) for name, t in tensors.items()})
    own = dict(method.named_parameters())
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
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor.to(own[name].device, own[name].dtype))
    return meta


def save_resume_state(path: str | Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_resume_state(path: str | Path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001  (any unreadable state: say so, never train from half a state)
        raise CheckpointError(
            f"The resume state '{path}' cannot be read ({error}). Delete it to start the run afresh."
        ) from None
