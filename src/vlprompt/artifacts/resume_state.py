"""The resume state file of an interrupted run, without pickle: one safetensors file whose tensors are the
trained parameters, the optimizer's buffers, the RNG states and the best-val snapshot, and whose header
metadata holds everything else as one JSON document.

Why not ``torch.save``: loading a pickle runs whatever its ``__reduce__`` says, and a run folder is something
people copy and share (sweeps, a colleague's results). A safetensors file is parsed, never executed. One file,
not a tensor file plus a JSON file, so that the atomic rename (core/io.py atomic_write) replaces the whole state at
once: a reader never sees tensors of one step with the counters of another.

Every value survives the round trip exactly: tensors bit for bit, Python floats through JSON's shortest repr
(which ``float()`` reads back to the same double), integers as they are.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlprompt.core.errors import CheckpointError
from vlprompt.core.io import atomic_write

FORMAT = "vlprompt-resume"
FORMAT_VERSION = 1
_META_KEY = "vlprompt_resume"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not part of a resume state's JSON")


def _encode_optimizer(state: dict, tensors: dict[str, torch.Tensor]) -> dict:
    """The optimizer's per-parameter buffers go to ``tensors``; their non-tensor entries (SGD's missing momentum
    buffer is None) and the param groups stay JSON."""
    scalars: dict[str, dict] = {}
    for index, entries in state["state"].items():
        kept = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                kept[key] = value
        scalars[str(index)] = kept
    return {"indices": [int(i) for i in state["state"]], "scalars": scalars, "param_groups": state["param_groups"]}


def _decode_optimizer(doc: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[int, dict] = {}
    for index in doc["indices"]:
        entries = dict(doc["scalars"].get(str(index), {}))
        prefix = f"optimizer/{index}/"
        entries.update({name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)})
        state[index] = entries
    groups = [dict(group) for group in doc["param_groups"]]
    for group in groups:  # tuples (Adam's betas) came back as lists; the optimizers read both alike
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def _encode_rng(rng: dict, tensors: dict[str, torch.Tensor]) -> dict:
    version, words, gauss = rng["python"]
    name, keys, pos, has_gauss, cached = rng["numpy"]
    tensors["rng/torch"] = rng["torch"]
    tensors["rng/numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    for i, cuda in enumerate(rng.get("cuda", [])):
        tensors[f"rng/cuda/{i}"] = cuda
    return {"python": [version, list(words), gauss], "numpy": [name, int(pos), int(has_gauss), float(cached)],
            "cuda_count": len(rng.get("cuda", []))}


def _decode_rng(doc: dict, tensors: dict[str, torch.Tensor]) -> dict:
    version, words, gauss = doc["python"]
    name, pos, has_gauss, cached = doc["numpy"]
    keys = tensors["rng/numpy_keys"].numpy().astype(np.uint32)
    return {
        "python": (version, tuple(words), gauss),
        "numpy": (name, keys, pos, has_gauss, cached),
        "torch": tensors["rng/torch"],
        "cuda": [tensors[f"rng/cuda/{i}"] for i in range(doc["cuda_count"])],
    }


def save_resume_state(path: str | Path, state: dict) -> Path:
    """Write ``state`` (train/resume.py's resume_state dict) atomically as one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state["trainable"].items():
        tensors[f"trainable/{name}"] = tensor
    accuracy, snapshot = state["best"]
    for name, tensor in (snapshot or {}).items():
        tensors[f"best/{name}"] = tensor
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "optimizer": _encode_optimizer(state["optimizer"], tensors),
        "rng": _encode_rng(state["rng"], tensors),
        "best": {"accuracy": accuracy, "has_snapshot": snapshot is not None},
        **{key: state[key] for key in ("epoch", "micro", "step", "history", "config", "fingerprint")},
    }
    text = json.dumps(doc, sort_keys=True, default=_json_default)
    # Own, contiguous CPU copies: safetensors refuses tensors that share storage (a view of a parameter).
    owned = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(owned, str(tmp), metadata={_META_KEY: text}))


def load_resume_state(path: str | Path) -> dict | None:
    """The state saved by ``save_resume_state``, or None when there is no file. Nothing is unpickled: a file
    that is not this format (a pickle planted under this name included) is refused naming the file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118  (not a dict)
        doc = json.loads(meta[_META_KEY])
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
        trainable = {n[len("trainable/"):]: t for n, t in tensors.items() if n.startswith("trainable/")}
        snapshot = {n[len("best/"):]: t for n, t in tensors.items() if n.startswith("best/")}
        return {
            "trainable": trainable,
            "optimizer": _decode_optimizer(doc["optimizer"], tensors),
            "rng": _decode_rng(doc["rng"], tensors),
            "best": (doc["best"]["accuracy"], snapshot if doc["best"]["has_snapshot"] else None),
            **{key: doc[key] for key in ("epoch", "micro", "step", "history", "config", "fingerprint")},
        }
    except Exception as error:  # noqa: BLE001  (safetensors, JSON and key errors alike: say so, never half-resume)
        raise CheckpointError(
            f"The resume state '{path}' cannot be read as a vlprompt resume state ({type(error).__name__}: "
            f"{str(error)[:160]}). It was damaged or replaced; nothing in it was executed. Rerun with --restart "
            "(or delete the file) to start the run afresh."
        ) from None


def refuse_legacy_pickle(path: str | Path) -> None:
    """A ``resume.pt`` left by an earlier vlprompt (0.1) is a pickle: never loaded, because loading it could run code."""
    path = Path(path)
    if path.exists():
        raise CheckpointError(
            f"'{path}' is a resume state in the old pickle format (torch.save). It is not loaded: unpickling a "
            "file from a run folder can run arbitrary code. Rerun with --restart to start this run afresh, or "
            "delete the file if you do not need its progress."
        )
