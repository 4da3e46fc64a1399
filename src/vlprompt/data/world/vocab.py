"""The world's vocabulary (shapes, colours, textures, styles, hand-crafted templates), read from world.json.

Names and templates are data: a user can read or change them without touching the renderer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

WORLD_JSON = Path(__file__).with_name("world.json")


@dataclass(frozen=True)
class Vocabulary:
    image_size: int
    shapes: tuple[str, ...]
    rare_shapes: tuple[str, ...]
    colours: dict[str, tuple[int, int, int]]
    textures: tuple[str, ...]
    sizes: dict[str, float]  # name -> object radius in image units
    positions: tuple[str, ...]  # 3x3 grid, row-major from the top left
    counts: tuple[str, ...]
    backgrounds: tuple[str, ...]
    seen_styles: tuple[str, ...]  # styles the shipped backbones were trained on
    unseen_styles: tuple[str, ...]  # held out for domain shift
    template_groups: dict[str, tuple[str, ...]]  # style -> hand-crafted templates

    @property
    def styles(self) -> tuple[str, ...]:
        return self.seen_styles + self.unseen_styles


def load_vocabulary(path: Path = WORLD_JSON) -> Vocabulary:
    raw = json.loads(Path(path).read_text())
    return Vocabulary(
        image_size=int(raw["image_size"]),
        shapes=tuple(raw["shapes"]),
        rare_shapes=tuple(raw["rare_shapes"]),
        colours={k: tuple(v) for k, v in raw["colours"].items()},
        textures=tuple(raw["textures"]),
        sizes=dict(raw["sizes"]),
        positions=tuple(raw["positions"]),
        counts=tuple(raw["counts"]),
        backgrounds=tuple(raw["backgrounds"]),
        seen_styles=tuple(raw["seen_styles"]),
        unseen_styles=tuple(raw["unseen_styles"]),
        template_groups={k: tuple(v) for k, v in raw["template_groups"].items()},
    )


VOCAB = load_vocabulary()
