"""Segmentation tasks over the world: each pixel labelled with the shape of the object seen there, or background.

The renderer knows every object's pixels (``render_with_objects``), so masks are exact and offline. Registered as
datasets ``world-seg`` (the five styles the backbones saw) and ``world-seg-<style>`` for each of the seven styles
(same classes: a style-shift split, e.g. train on ``world-seg`` and evaluate on ``world-seg-sketch``).
Scenes hold one object (small to large) or, half of the time, two or three small ones in distinct grid cells.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from vlprompt.core.errors import ConfigError
from vlprompt.data.base import TaskData
from vlprompt.data.segmentation import SegmentationDataset, SegmentationLabels
from vlprompt.data.world.render import render_with_objects
from vlprompt.data.world.scenes import SceneDistribution, sample_scene, stable_seed
from vlprompt.data.world.vocab import VOCAB

BACKGROUND = "background"
CLASSNAMES = (BACKGROUND, *VOCAB.shapes)
OPTIONS = ("train_images", "val_images", "test_images", "seed", "image_size")


def _distribution(styles: tuple[str, ...]) -> SceneDistribution:
    return SceneDistribution(styles=styles, max_count=3, count_probability=0.5)


def world_seg_scene(name: str, styles: tuple[str, ...], split: str, index: int, seed: int):
    rng = np.random.default_rng(stable_seed(seed, name, split, index))
    return sample_scene(rng, _distribution(styles))[0]


def world_seg_pair(name: str, styles: tuple[str, ...], split: str, index: int, seed: int,
                   size: int) -> tuple[Image.Image, Image.Image]:
    """The image and its label mask (0 background, 1 + shape index for an object) at ``size`` pixels."""
    scene = world_seg_scene(name, styles, split, index, seed)
    pixels, owner = render_with_objects(scene, size)
    classes = np.array([0] + [1 + VOCAB.shapes.index(obj.shape) for obj in scene.objects], dtype=np.uint8)
    return Image.fromarray(pixels), Image.fromarray(classes[owner + 1], mode="L")


class WorldSegLoader:
    """Source id ``"<split>/<index>"`` -> the image (``part="image"``) or its mask (``part="mask"``); picklable."""

    def __init__(self, name: str, styles: tuple[str, ...], seed: int, size: int, part: str) -> None:
        self.name, self.styles, self.seed, self.size, self.part = name, styles, seed, size, part

    def __call__(self, source: str) -> Image.Image:
        split, index = source.rsplit("/", 1)
        image, mask = world_seg_pair(self.name, self.styles, split, int(index), self.seed, self.size)
        return image if self.part == "image" else mask


def _split(name: str, styles: tuple[str, ...], split: str, count: int, seed: int, size: int) -> SegmentationDataset:
    sources = [f"{split}/{i:06d}" for i in range(count)]
    return SegmentationDataset(sources, sources, WorldSegLoader(name, styles, seed, size, "image"),
                               WorldSegLoader(name, styles, seed, size, "mask"), name=f"world-{name}:{split}",
                               ids=[f"{name}/{s}" for s in sources])


def load_world_segmentation(name: str = "seg", styles: tuple[str, ...] | None = None, train_images: int = 256,
                            val_images: int = 64, test_images: int = 256, seed: int = 0,
                            image_size: int | None = None) -> TaskData:
    """A world segmentation task; the same (name, seed) always draws the same scenes, and growing a split keeps
    its first images. Scenes of a style-shift split differ from ``world-seg``'s (seeded by the name)."""
    styles = styles or VOCAB.seen_styles
    size = image_size or VOCAB.image_size
    for field_name, value in (("train_images", train_images), ("test_images", test_images)):
        if value < 1:
            raise ConfigError(f"world segmentation {field_name} = {value} must be at least 1.")
    if val_images < 0:
        raise ConfigError(f"world segmentation val_images = {val_images} must be 0 (no val split) or more.")
    if size % 2 or size < 8:
        raise ConfigError(f"world segmentation image_size = {size} must be an even number of pixels, 8 or more.")
    labels = SegmentationLabels(list(CLASSNAMES), ["a photo of a {}."])
    return TaskData(
        name=f"world-{name}",
        labels=labels,
        train=_split(name, styles, "train", train_images, seed, size),
        val=_split(name, styles, "val", val_images, seed, size) if val_images else None,
        test=_split(name, styles, "test", test_images, seed, size),
        meta={"world_seed": seed, "styles": list(styles), "task_type": "segmentation",
              "description": "per-pixel shape class (24 shapes) or background"},
    )


def _register() -> None:
    from vlprompt.data.registry import register_dataset

    variants = {"seg": None, **{f"seg-{style}": (style,) for style in VOCAB.styles}}
    for name, styles in variants.items():

        def loader(root: str | None = None, _name: str = name, _styles=styles, **options) -> TaskData:
            if root is not None:
                raise ConfigError(f"Dataset 'world-{_name}' is generated, not read from disk: drop root={root!r}.")
            unknown = sorted(set(options) - set(OPTIONS))
            if unknown:
                raise ConfigError(f"Dataset 'world-{_name}' has no option {', '.join(unknown)}; its options are "
                                  f"{', '.join(OPTIONS)}.")
            return load_world_segmentation(_name, _styles, **options)

        register_dataset(f"world-{name}")(loader)


_register()
