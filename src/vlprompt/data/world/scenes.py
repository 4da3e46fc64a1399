"""Seeded scene sampling and captions.

A scene is drawn from a ``SceneDistribution`` with a numpy Generator; any attribute can be pinned (the label of
a task) while the others vary. Captions describe a scene the way the shipped CLIP's alignment data did: the
object's shape almost always, colour often, texture rarely, and the rare shapes mostly by a generic word.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vlprompt.data.world.render import Scene, WorldObject
from vlprompt.data.world.vocab import VOCAB


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, stable across Python runs (no hash randomisation)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return (zlib.crc32(text) << 31) ^ zlib.adler32(text)


@dataclass(frozen=True)
class SceneDistribution:
    """Which values each attribute may take; ``None`` means the whole vocabulary."""

    shapes: tuple[str, ...] | None = None
    colours: tuple[str, ...] | None = None
    textures: tuple[str, ...] | None = None
    sizes: tuple[str, ...] | None = None
    styles: tuple[str, ...] = field(default_factory=lambda: VOCAB.seen_styles)
    backgrounds: tuple[str, ...] | None = None
    max_count: int = 1  # objects per scene drawn from 1..max_count (count tasks pin it instead)
    count_probability: float = 0.0  # chance of a multi-object scene when max_count > 1


def _pick(rng: np.random.Generator, pinned: str | None, allowed: Sequence[str] | None, every: Sequence[str]) -> str:
    if pinned is not None:
        return pinned
    options = allowed if allowed else every
    return options[int(rng.integers(len(options)))]


def cell_centre(position: str) -> tuple[float, float]:
    index = VOCAB.positions.index(position)
    row, col = divmod(index, 3)
    return (col * 2 + 1) / 6, (row * 2 + 1) / 6


def sample_scene(
    rng: np.random.Generator,
    dist: SceneDistribution = SceneDistribution(),
    *,
    shape: str | None = None,
    colour: str | None = None,
    texture: str | None = None,
    size: str | None = None,
    style: str | None = None,
    position: str | None = None,
    count: int | None = None,
) -> tuple[Scene, dict]:
    """A scene and its attributes (``shape``, ``colour``, ``texture``, ``size``, ``style``, ``position``, ``count``)."""
    style = _pick(rng, style, dist.styles, VOCAB.styles)
    background = _pick(rng, None, dist.backgrounds, VOCAB.backgrounds)
    if count is None:
        multi = dist.max_count > 1 and rng.random() < dist.count_probability
        count = int(rng.integers(2, dist.max_count + 1)) if multi else 1
    attrs: dict = {"style": style, "background": background, "count": count}
    if count == 1:
        shape = _pick(rng, shape, dist.shapes, VOCAB.shapes)
        colour = _pick(rng, colour, dist.colours, tuple(VOCAB.colours))
        texture = _pick(rng, texture, dist.textures, VOCAB.textures)
        if position is not None and size is None:
            size = _pick(rng, None, ("small", "medium"), VOCAB.sizes)
        size = _pick(rng, size, dist.sizes, tuple(VOCAB.sizes))
        radius = VOCAB.sizes[size] * rng.uniform(0.9, 1.1)
        if position is not None:
            cx, cy = cell_centre(position)
            cx, cy = cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04)
            radius = min(radius, 0.16)
        else:
            cx, cy = rng.uniform(radius, 1 - radius, size=2)
        angle = rng.uniform(-0.35, 0.35)
        objects = (WorldObject(shape, colour, texture, float(cx), float(cy), float(radius), float(angle)),)
        attrs.update(shape=shape, colour=colour, texture=texture, size=size, position=position)
    else:  # several small objects in distinct cells of the 3x3 grid
        cells = rng.choice(len(VOCAB.positions), size=count, replace=False)
        objects = []
        for cell in cells:
            cx, cy = cell_centre(VOCAB.positions[int(cell)])
            objects.append(
                WorldObject(
                    _pick(rng, shape, dist.shapes, VOCAB.shapes),
                    _pick(rng, colour, dist.colours, tuple(VOCAB.colours)),
                    _pick(rng, texture, dist.textures, VOCAB.textures),
                    float(cx + rng.uniform(-0.03, 0.03)),
                    float(cy + rng.uniform(-0.03, 0.03)),
                    float(rng.uniform(0.12, 0.15)),
                    float(rng.uniform(-0.35, 0.35)),
                )
            )
        objects = tuple(objects)
        attrs.update(shape=shape, colour=colour, texture=texture, size=None, position=None)
    scene = Scene(objects, background, style, int(rng.integers(2**62)))
    return scene, attrs


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(attrs: dict, rng: np.random.Generator) -> str:
    """An alignment caption: a template of the scene's style around a description of the object.

    The policy is what gives prompt learning room on the world: texture is named in one caption in ten and
    the rare shapes' names in one in twelve, so zero-shot CLIP knows them weakly though the image tower sees them.
    """
    templates = VOCAB.template_groups[attrs["style"]]
    template = templates[int(rng.integers(len(templates)))]
    if attrs["count"] > 1:
        words = [VOCAB.counts[attrs["count"] - 1], "shapes" if rng.random() < 0.5 else "objects"]
        description = " ".join(words)
        text = template.replace("a {}", "{}").replace("an {}", "{}").format(description)
        return text
    words = []
    if attrs.get("size") in ("small", "large") and rng.random() < 0.3:
        words.append(attrs["size"])
    if rng.random() < 0.7:
        words.append(attrs["colour"])
    if rng.random() < 0.1:
        words.append(attrs["texture"])
    shape = attrs["shape"]
    if shape in VOCAB.rare_shapes and rng.random() > 1 / 12:
        shape = "shape" if rng.random() < 0.5 else "object"
    words.append(shape)
    description = " ".join(words)
    text = template.replace("a {}", "{}").replace("an {}", "{}")
    if text == template:  # the template has no article before the slot ("a neon {}.")
        text = template.format(description)
    else:
        text = text.format(_article(description))
    extras = []
    if attrs.get("position") and rng.random() < 0.5:
        extras.append(f"at the {attrs['position']}")
    if rng.random() < 0.1:
        extras.append(f"on a {attrs['background']} background")
    if extras:
        text = text.rstrip(".") + " " + " ".join(extras) + "."
    return text
