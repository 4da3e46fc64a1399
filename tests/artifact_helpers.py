"""Shared by the artifact, predict and serving tests: tiny tasks, images and seeded random prompts."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vlprompt.data.base import LabelSpace

CLASSES = ["red", "green", "blue"]
GROUPS = {"photo": ["a photo of a {}."], "drawing": ["a drawing of a {}."], "sketch": ["a sketch of a {}."]}
LABELS = LabelSpace(list(CLASSES), ["a photo of a {}.", "a drawing of a {}."], GROUPS)


def images(count: int = 6, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        pixels = rng.integers(0, 80, (32, 32, 3)).astype(np.uint8)
        pixels[..., i % 3] += 150
        out.append(Image.fromarray(pixels))
    return out


def randomize(method, seed: int) -> None:
    """Seeded random values for every trained tensor, so that artifacts differ from a fresh method."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in method.trainable_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
