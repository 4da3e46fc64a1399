"""The pretraining data of the shipped world backbones: images with attribute labels and captions.

It is drawn from its own seeds ("pretrain" split), so it never repeats an image of a task's train, val or test
split. Item i depends only on (seed, i), so the pool is the same whatever the number of worker processes.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from vlprompt.data.world.render import render
from vlprompt.data.world.scenes import SceneDistribution, caption, sample_scene, stable_seed
from vlprompt.data.world.vocab import VOCAB

PRETRAIN_DISTRIBUTION = SceneDistribution(styles=VOCAB.seen_styles, max_count=4, count_probability=0.1)


@dataclass
class PretrainPool:
    images: np.ndarray  # uint8 [N, H, W, 3]
    shape: np.ndarray  # int64 [N], index into VOCAB.shapes, -1 for multi-object scenes
    colour: np.ndarray  # int64 [N], -1 for multi-object scenes
    texture: np.ndarray  # int64 [N], -1 for multi-object scenes (never used as a training label)
    style: np.ndarray  # int64 [N], index into VOCAB.seen_styles
    count: np.ndarray  # int64 [N], 1..4
    captions: list[list[str]]  # captions_per_image captions for each image


def _items(args: tuple[int, int, int, int]) -> list[tuple]:
    seed, start, stop, captions_per_image = args
    colours, out = list(VOCAB.colours), []
    for i in range(start, stop):
        rng = np.random.default_rng(stable_seed(seed, "pretrain", i))
        scene, attrs = sample_scene(rng, PRETRAIN_DISTRIBUTION)
        single = attrs["count"] == 1
        out.append((
            render(scene),
            VOCAB.shapes.index(attrs["shape"]) if single else -1,
            colours.index(attrs["colour"]) if single else -1,
            VOCAB.textures.index(attrs["texture"]) if single else -1,
            VOCAB.seen_styles.index(attrs["style"]),
            attrs["count"],
            [caption(attrs, rng) for _ in range(captions_per_image)],
        ))
    return out


def pretraining_pool(size: int, seed: int = 0, captions_per_image: int = 4, workers: int = 1) -> PretrainPool:
    chunk = 2000
    jobs = [(seed, s, min(s + chunk, size), captions_per_image) for s in range(0, size, chunk)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_items, jobs))
    else:
        parts = [_items(job) for job in jobs]
    items = [item for part in parts for item in part]
    columns = list(zip(*items))
    as_int = [np.asarray(c, dtype=np.int64) for c in columns[1:6]]
    return PretrainPool(np.stack(columns[0]), *as_int, captions=[list(c) for c in columns[6]])
