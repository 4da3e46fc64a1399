"""Frozen image features, computed once per dataset instead of once per step."""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader

from vlprompt.data.base import ImageDataset


@torch.no_grad()
def encode_dataset(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    dataset: ImageDataset,
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    cache_dir=None,
    cache_key: dict | None = None,
    views: int = 1,
    augment: Callable | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Encode every image of ``dataset`` (with its own transform) in order -> [N, D]."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    chunks = [encoder(images.to(device)).float().cpu() for images, _ in loader]
    return torch.cat(chunks)
