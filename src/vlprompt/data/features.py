"""Frozen image features, computed once per dataset instead of once per step, optionally kept on disk.

With the image tower frozen, a CLIP text method (or a linear probe) needs each image's feature only once:
exactly with the dataset's own (eval) transform, or K augmented views per image. On disk a cache file is
named by a hash of everything that determines its content: the caller's key (backbone id, weights hash,
transform name), the data (item ids, labels, how images are loaded), the transform itself, the number of
views and their seed. A file is written to a temporary name and moved into place, and it records its full
key and a checksum of its tensor, so an interrupted write, a truncated file or a file from another backbone
is never read as complete: it is rebuilt.

Images are decoded by DataLoader workers (data/loading.py), and under torchrun the batches are dealt out
round-robin over the ranks and the results all-gathered: every batch is encoded with exactly the items and
shape it has in one process, so every rank ends with the same, bit-identical cache as a single process.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from vlprompt.core import distributed
from vlprompt.core.errors import ConfigError
from vlprompt.core.io import atomic_write
from vlprompt.data.base import ImageDataset
from vlprompt.data.loading import BatchLoader, workers_for

log = logging.getLogger(__name__)

# 2: augmented views are drawn per image from (seed, view, index), whatever the worker count.
CACHE_FORMAT = 2
_SIMPLE = (str, int, float, bool, type(None))


def _describe(obj: object) -> str:
    """A process-independent description of a loader or transform (no memory addresses)."""
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    state = getattr(obj, "__dict__", None)
    if state is not None and all(isinstance(v, _SIMPLE) for v in state.values()):
        return f"{kind}{sorted(state.items())}"
    text = repr(obj)
    return kind if " at 0x" in text else text


def dataset_fingerprint(dataset: ImageDataset) -> str:
    """Hash of what the dataset's images and labels are: ids, labels, loader; in-memory images by content."""
    digest = hashlib.sha256()
    digest.update(_describe(dataset.load).encode())
    digest.update(json.dumps(dataset.labels).encode())
    for source, item_id in zip(dataset.sources, dataset.ids):
        if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
            digest.update(str(source).encode() if not isinstance(source, bytes) else source)
        else:  # an in-memory object: its repr may hold an address, so hash the decoded pixels
            digest.update(np.asarray(dataset.load(source)).tobytes())
        digest.update(item_id.encode())
    return digest.hexdigest()


def _checksum(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def feature_cache_key(method, dataset: ImageDataset, transform_name: str) -> dict:
    """What makes a dataset's cached features reusable: the backbone, its weights, the items, the transform."""
    return {
        "backbone": method.backbone.backbone_id,
        "weights": method.backbone.weights_hash(),
        "dataset": dataset.name,
        "n": len(dataset),
        "transform": transform_name,
    }


def _full_key(cache_key: dict, dataset: ImageDataset, transform, views: int, seed: int) -> str:
    key = {
        "format": CACHE_FORMAT,
        "caller": cache_key,
        "data": dataset_fingerprint(dataset),
        "transform": _describe(transform) if transform is not None else None,
        "views": views,
        "seed": seed if views > 1 else None,
    }
    return json.dumps(key, sort_keys=True, default=str)


def _read(path: Path, key: str) -> torch.Tensor | None:
    """The cached tensor if the file is complete and belongs to ``key``; None (rebuild) otherwise."""
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as handle:  # metadata lives in the safetensors header
            header_len = int.from_bytes(handle.read(8), "little")
            metadata = json.loads(handle.read(header_len)).get("__metadata__", {})
    except Exception as error:  # noqa: BLE001  (safetensors raises several types for damaged files)
        log.warning("Feature cache %s is unreadable (%s); rebuilding it.", path, error)
        return None
    features = tensors.get("features")
    if features is None or metadata.get("key") != key:
        log.warning("Feature cache %s belongs to another backbone, dataset or transform; rebuilding it.", path)
        return None
    if metadata.get("checksum") != _checksum(features):
        log.warning("Feature cache %s fails its checksum (interrupted or damaged write); rebuilding it.", path)
        return None
    return features


def _write(path: Path, features: torch.Tensor, key: str) -> None:
    """Atomic (core/io.py atomic_write): a reader sees no cache file or a complete one with its checksum."""
    metadata = {"key": key, "checksum": _checksum(features)}
    atomic_write(path, lambda tmp: save_file({"features": features.contiguous()}, str(tmp), metadata=metadata))


def _encode_pass(encoder, dataset: ImageDataset, batch_size: int, device, *, seed: int, view: int,
                 num_workers: int) -> torch.Tensor:
    """One pass over ``dataset`` in order; this rank encodes batches rank, rank + W, ... and all ranks gather."""
    device = torch.device(device)
    bounds = [(start, min(start + batch_size, len(dataset))) for start in range(0, len(dataset), batch_size)]
    rank, world = distributed.rank(), distributed.world_size()
    mine = bounds[rank::world]
    loader = BatchLoader(dataset, seed=seed, num_workers=workers_for(num_workers, len(mine)),
                         pin_memory=device.type == "cuda", persistent=False)
    batches = loader.run(view, [range(start, stop) for start, stop in mine])
    # None: tqdm shows the bar on a terminal and stays quiet in logs and CI.
    batches = tqdm(batches, total=len(mine), desc=f"encoding {dataset.name or 'images'}", leave=False,
                   disable=None if rank == 0 else True)
    chunks = [encoder(images.to(device, non_blocking=True)).float().cpu() for images, _ in batches]
    if world == 1:
        return torch.cat(chunks)
    # Gathered flat, since a rank left without a batch (fewer batches than ranks) does not know the width.
    local = torch.cat([chunk.reshape(-1) for chunk in chunks]) if chunks else torch.zeros(0)
    parts = distributed.all_gather_rows(local)
    width = sum(part.numel() for part in parts) // len(dataset)
    ordered: list[torch.Tensor] = [torch.empty(0)] * len(bounds)
    for owner, part in enumerate(parts):
        offset = 0
        for number in range(owner, len(bounds), world):
            size = (bounds[number][1] - bounds[number][0]) * width
            ordered[number] = part[offset : offset + size]
            offset += size
    return torch.cat(ordered).reshape(len(dataset), width)


@torch.no_grad()
def encode_dataset(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    dataset: ImageDataset,
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    cache_key: dict | None = None,
    views: int = 1,
    augment: Callable | None = None,
    seed: int = 0,
    num_workers: int = 0,
) -> torch.Tensor:
    """Encode every image of ``dataset`` in order -> [N, D]; with ``views`` > 1 -> [views, N, D].

    ``views`` = 1 uses the dataset's own transform (exact features). ``views`` > 1 draws each view with
    ``augment`` (default: the dataset's transform, expected to be random) under a generator seeded by
    (seed, view, index) per image, so the views are reproducible whatever ``num_workers`` (decoding processes;
    0 = this process) and the number of ranks. ``cache_dir`` needs ``cache_key`` (at least the backbone id
    and its weights hash) so that features of one backbone are never served to another.
    """
    if views < 1:
        raise ConfigError(f"encode_dataset: views = {views} must be at least 1.")
    if views > 1 and augment is not None:
        dataset = dataset.with_transform(augment)
    key = path = None
    if cache_dir is not None:
        if not cache_key:
            raise ConfigError(
                "encode_dataset: a cache_dir was given without a cache_key; pass at least the backbone id and its "
                "weights hash (Backbone.weights_hash()) so that cached features can never be served to another model."
            )
        key = _full_key(cache_key, dataset, dataset.transform, views, seed)
        path = Path(cache_dir) / f"features-{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"
        cached = _read(path, key) if path.exists() else None
        # Ranks must agree on encoding, or some would wait in a collective the others never join.
        if distributed.sum_scalar(float(cached is not None)) == distributed.world_size():
            log.info("Image features read from %s", path)
            return cached
    passes = [
        _encode_pass(encoder, dataset, batch_size, device, seed=seed, view=view, num_workers=num_workers)
        for view in range(views)
    ]
    features = passes[0] if views == 1 else torch.stack(passes)
    if path is not None and distributed.is_main_process():
        _write(path, features, key)
        log.info("Image features written to %s", path)
    return features
