"""The procedural world: deterministic rendering, well-formed tasks and splits, captions, dataset names."""
from __future__ import annotations

import numpy as np
import pytest

from vlprompt.core.errors import ConfigError, VlpromptError
from vlprompt.data.world.pretrain import pretraining_pool
from vlprompt.data.world.render import SHAPES, Scene, WorldObject, render
from vlprompt.data.world.scenes import SceneDistribution, caption, sample_scene
from vlprompt.data.world.tasks import WORLD_TASKS, WorldImageLoader, get_world_task, load_world_task
from vlprompt.data.world.vocab import VOCAB


def _scene(shape="star", style="photo", seed=3, texture="striped") -> Scene:
    return Scene((WorldObject(shape, "red", texture, 0.5, 0.5, 0.3, 0.1),), "plain", style, seed)


def test_render_is_deterministic_and_seed_dependent():
    a, b = render(_scene(seed=3)), render(_scene(seed=3))
    assert a.dtype == np.uint8 and a.shape == (VOCAB.image_size, VOCAB.image_size, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render(_scene(seed=4)))  # background and noise follow the scene seed


@pytest.mark.parametrize("style", VOCAB.styles)
def test_every_style_draws_every_shape_distinctly(style):
    images = {shape: render(_scene(shape, style, texture="solid")).astype(int) for shape in VOCAB.shapes}
    for shape, image in images.items():
        assert np.abs(image - render(Scene((), "plain", style, 3)).astype(int)).sum() > 0, shape
    shapes = list(images)
    for i, first in enumerate(shapes):  # no two shapes render to the same picture
        for second in shapes[i + 1:]:
            assert np.abs(images[first] - images[second]).mean() > 1.0, (style, first, second)


def test_shape_masks_stay_near_the_unit_disk_and_differ():
    coords = np.linspace(-1.2, 1.2, 97)
    u, v = np.meshgrid(coords, coords)
    masks = {name: fn(u, v) for name, fn in SHAPES.items()}
    outside = np.hypot(u, v) > 1.2  # corners may poke a little past the unit disk
    for name, mask in masks.items():
        assert mask.mean() > 0.05, name
        assert not (mask & outside).any(), name
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.9, (a, b, iou)


def test_task_labels_are_balanced_and_pinned():
    for name, task in WORLD_TASKS.items():
        data = load_world_task(name, train_per_class=2, val_per_class=1, test_per_class=2)
        assert data.name == f"world-{name}"
        assert data.labels.classnames == list(task.display_names or task.classnames)
        counts = np.bincount(data.test.labels, minlength=len(task.classnames))
        assert (counts == 2).all(), name
        for index in range(len(task.classnames)):
            _, attrs = task.attributes("test", index)
            value = attrs["count"] if task.attribute == "count" else attrs[task.attribute]
            expected = VOCAB.counts.index(task.classnames[index]) + 1 if task.attribute == "count" else None
            assert value == (expected or task.classnames[index]), (name, index)


def test_every_task_image_has_a_caption():
    task = get_world_task("object-neon")
    text = task.caption("test", 6)
    assert text == task.caption("test", 6) and text.endswith(".")
    assert "neon" in text


def test_count_scenes_hold_that_many_objects():
    task = get_world_task("count")
    for index in range(8):
        scene, attrs = task.attributes("train", index)
        assert len(scene.objects) == attrs["count"] == index % 4 + 1


def test_images_are_reproducible_and_splits_disjoint():
    first = load_world_task("object", train_per_class=2, val_per_class=1, test_per_class=2)
    again = load_world_task("object", train_per_class=4, val_per_class=1, test_per_class=2)
    assert again.train.sources[: len(first.train)] == first.train.sources  # growing a split keeps its prefix
    for i in (0, 5, 17):
        assert np.array_equal(np.asarray(first.train[i][0]), np.asarray(WorldImageLoader()(first.train.sources[i])))
    train = {np.asarray(first.train[i][0]).tobytes() for i in range(len(first.train))}
    test = {np.asarray(first.test[i][0]).tobytes() for i in range(len(first.test))}
    assert not train & test
    other_seed = load_world_task("object", train_per_class=1, val_per_class=0, test_per_class=1, seed=1)
    assert not np.array_equal(np.asarray(other_seed.train[0][0]), np.asarray(first.train[0][0]))
    assert other_seed.val is None


def test_label_space_templates_and_groups():
    labels = get_world_task("object").label_space()
    assert labels.templates[0] == "a photo of a {}."
    assert set(labels.template_groups) == set(VOCAB.styles)
    assert all(len(group) >= 3 for group in labels.template_groups.values())
    texture = get_world_task("texture").label_space()
    assert texture.templates[0].format("striped") == "a photo of a striped shape."


def test_style_shift_tasks_share_class_names():
    names = {get_world_task(f"object-{style}").classnames for style in VOCAB.styles}
    assert names == {get_world_task("object").classnames}
    assert get_world_task("object-sketch").distribution.styles == ("sketch",)
    assert "sketch" not in get_world_task("object").distribution.styles


def test_captions_follow_the_designed_policy():
    rng = np.random.default_rng(0)
    texts, rare, rare_named, textured = [], 0, 0, 0
    for _ in range(3000):
        _, attrs = sample_scene(rng, SceneDistribution())
        text = caption(attrs, rng)
        texts.append(text)
        assert "{}" not in text and text.endswith(".")
        if attrs["shape"] in VOCAB.rare_shapes:
            rare += 1
            rare_named += attrs["shape"] in text
        textured += attrs["texture"] in text
    assert rare_named / rare < 0.2  # rare class names are seldom used
    assert 0.04 < textured / len(texts) < 0.2  # texture is described weakly
    assert sum(VOCAB.shapes[0] in t for t in texts) > 50


def test_dataset_registry_names_and_errors():
    from vlprompt.data.registry import DATASETS

    task = DATASETS.get("world-object-neon")(train_per_class=1, val_per_class=0, test_per_class=1)
    assert task.meta["styles"] == ["neon"]
    with pytest.raises(ConfigError, match="generated"):
        DATASETS.get("world-object")(root="/data")
    with pytest.raises(ConfigError, match="shots"):
        DATASETS.get("world-object")(shots=4)
    with pytest.raises(VlpromptError, match="object"):
        get_world_task("objekt")


def test_pretraining_pool_items_depend_only_on_seed_and_index():
    pool = pretraining_pool(30, seed=5, captions_per_image=2)
    assert pool.images.shape == (30, VOCAB.image_size, VOCAB.image_size, 3)
    prefix = pretraining_pool(10, seed=5, captions_per_image=2)
    assert np.array_equal(pool.images[:10], prefix.images) and pool.captions[:10] == prefix.captions
    assert not np.array_equal(pretraining_pool(10, seed=6).images, prefix.images)
    multi = pool.count > 1
    assert (pool.shape[multi] == -1).all() and (pool.shape[~multi] >= 0).all()


def test_paint_task_names_half_its_colours_with_words_no_caption_uses():
    task = get_world_task("paint")
    names = task.label_space().classnames
    assert names != list(task.classnames) and len(set(names)) == len(names) == 8
    renamed = [n for n, c in zip(names, task.classnames) if n != c]
    assert len(renamed) == 4
    pool = pretraining_pool(200, seed=0, captions_per_image=2)
    text = " ".join(c for captions in pool.captions for c in captions)
    assert not any(name in text for name in renamed)
    data = load_world_task("paint", train_per_class=2, val_per_class=1, test_per_class=1)
    assert data.labels.classnames == names and data.train.labels[:8] == list(range(8))
