"""Named tasks over the world, each a ``TaskData`` whose images are rendered on demand from their source id.

A source is a short string ``"<task>/<split>/<index>"``: JSON-friendly (few-shot index files store it like a
relative path), and enough, with the world seed, to redraw the same image anywhere. Labels are balanced
(``index % num_classes``) and known without rendering, so few-shot sampling stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from vlprompt.core.errors import ConfigError, unknown_name
from vlprompt.data.base import DEFAULT_TEMPLATE, ImageDataset, LabelSpace, TaskData
from vlprompt.data.world.render import Scene, render
from vlprompt.data.world.scenes import SceneDistribution, caption, sample_scene, stable_seed
from vlprompt.data.world.vocab import VOCAB


def _groups(styles: tuple[str, ...], slot: str = "{}") -> dict[str, list[str]]:
    """The style template groups with the class slot widened (e.g. '{} shape' for texture names)."""
    return {s: [t.replace("{}", slot) for t in VOCAB.template_groups[s]] for s in styles}


@dataclass(frozen=True)
class WorldTask:
    """A classification task: which scene attribute is the label, over which scenes, with which text."""

    name: str
    attribute: str  # shape | colour | texture | size | position | count | style
    classnames: tuple[str, ...]
    distribution: SceneDistribution
    template: str  # the single hand-crafted template (zero-shot CLIP, ProGrad, KgCoOp)
    template_groups: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    # What the task calls its classes when that differs from the attribute values the scenes are drawn with
    # (e.g. paint-catalogue names for colours): the text side of the task, not the images.
    display_names: tuple[str, ...] | None = None

    def label_space(self) -> LabelSpace:
        ensemble = [self.template] + [t for g in self.template_groups.values() for t in g if t != self.template]
        names = list(self.display_names or self.classnames)
        return LabelSpace(names, ensemble, {k: list(v) for k, v in self.template_groups.items()})

    def attributes(self, split: str, index: int, seed: int = 0) -> tuple[Scene, dict]:
        """The scene at (split, index) and its attributes; the label is ``index % num_classes``."""
        rng = np.random.default_rng(stable_seed(seed, self.name, split, index))
        value = self.classnames[index % len(self.classnames)]
        pinned = {"count": VOCAB.counts.index(value) + 1} if self.attribute == "count" else {self.attribute: value}
        if self.attribute != "count":
            pinned.setdefault("count", 1)
        return sample_scene(rng, self.distribution, **pinned)

    def caption(self, split: str, index: int, seed: int = 0) -> str:
        """A caption of the image at (split, index), in the style of the alignment captions."""
        _, attrs = self.attributes(split, index, seed)
        return caption(attrs, np.random.default_rng(stable_seed(seed, self.name, split, index, "caption")))


PAINT_NAMES = {"orange": "tangerine", "cyan": "cerulean", "purple": "aubergine", "pink": "fuchsia"}


def _build_tasks() -> dict[str, WorldTask]:
    seen, every = VOCAB.seen_styles, VOCAB.styles
    shape_groups = _groups(every)
    tasks = [
        WorldTask("object", "shape", VOCAB.shapes, SceneDistribution(styles=seen), DEFAULT_TEMPLATE, shape_groups,
                  "24 object classes in the five styles the backbones saw; base/new and few-shot benchmark."),
        WorldTask("texture", "texture", VOCAB.textures, SceneDistribution(styles=seen, sizes=("medium", "large")),
                  "a photo of a {} shape.", _groups(seen, "{} shape"),
                  "6 fill textures: encoded by the image tower, named in few captions."),
        WorldTask("colour", "colour", tuple(VOCAB.colours), SceneDistribution(styles=seen),
                  "a photo of a {} shape.", _groups(seen, "{} shape"), "8 colours; easy for zero-shot CLIP."),
        # Head-room by design (SPEC section 4): half the classes carry paint-catalogue names that no alignment
        # caption ever used, the way fine-grained datasets name classes with words CLIP rarely read. The image
        # tower separates colours well, so a linear head or class-specific context can recover what zero-shot
        # text cannot; shared context cannot fix a class name.
        WorldTask("paint", "colour", tuple(VOCAB.colours), SceneDistribution(styles=seen),
                  "a photo of a {} shape.", _groups(seen, "{} shape"),
                  "8 colours, four under everyday names and four under paint names the captions never use.",
                  display_names=tuple(PAINT_NAMES.get(c, c) for c in VOCAB.colours)),
        WorldTask("size", "size", tuple(VOCAB.sizes), SceneDistribution(styles=seen),
                  "a photo of a {} shape.", _groups(seen, "{} shape"), "3 object sizes (structured)."),
        WorldTask("position", "position", VOCAB.positions, SceneDistribution(styles=seen),
                  "a photo of a shape at the {}.", {}, "9 grid cells (structured, VTAB-style)."),
        WorldTask("count", "count", VOCAB.counts, SceneDistribution(styles=seen, max_count=4),
                  "a photo of {} shapes.", {}, "1 to 4 objects (structured, VTAB-style)."),
        WorldTask("style", "style", seen, SceneDistribution(styles=seen), "a {} of a shape.", {},
                  "which of the five seen styles an image is drawn in."),
    ]
    for style in every:
        seen_note = "seen by the backbones" if style in seen else "never seen by the backbones (domain shift)"
        tasks.append(
            WorldTask(f"object-{style}", "shape", VOCAB.shapes, SceneDistribution(styles=(style,)),
                      DEFAULT_TEMPLATE, shape_groups, f"the 24 shapes, all in the {style} style, {seen_note}.")
        )
    return {t.name: t for t in tasks}


WORLD_TASKS = _build_tasks()


def world_task_names() -> list[str]:
    return sorted(WORLD_TASKS)


def get_world_task(name: str) -> WorldTask:
    try:
        return WORLD_TASKS[name]
    except KeyError:
        raise unknown_name("world task", name, WORLD_TASKS) from None


class WorldImageLoader:
    """Turns a source id ``"<task>/<split>/<index>"`` into its PIL image (picklable for DataLoader workers)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, source: str) -> Image.Image:
        task_name, split, index = source.rsplit("/", 2)
        scene, _ = get_world_task(task_name).attributes(split, int(index), self.seed)
        return Image.fromarray(render(scene))


def _split(task: WorldTask, split: str, per_class: int, seed: int) -> ImageDataset:
    count = per_class * len(task.classnames)
    sources = [f"{task.name}/{split}/{i:06d}" for i in range(count)]
    labels = [i % len(task.classnames) for i in range(count)]
    return ImageDataset(sources, labels, WorldImageLoader(seed), name=f"world-{task.name}:{split}")


def load_world_task(
    name: str,
    train_per_class: int = 32,
    val_per_class: int = 8,
    test_per_class: int = 50,
    seed: int = 0,
) -> TaskData:
    """A world task with balanced splits of the given sizes; the same (name, seed) always draws the same images.

    Growing a split keeps its first images: index i is the same image whatever the split size.
    """
    task = get_world_task(name)
    for field_name, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if value < 1:
            raise ConfigError(f"load_world_task.{field_name} = {value} must be at least 1.")
    if val_per_class < 0:
        raise ConfigError(f"load_world_task.val_per_class = {val_per_class} must be 0 (no val split) or more.")
    return TaskData(
        name=f"world-{name}",
        labels=task.label_space(),
        train=_split(task, "train", train_per_class, seed),
        val=_split(task, "val", val_per_class, seed) if val_per_class else None,
        test=_split(task, "test", test_per_class, seed),
        meta={"world_seed": seed, "attribute": task.attribute, "description": task.description,
              "styles": list(task.distribution.styles)},
    )



LOADER_OPTIONS = ("train_per_class", "val_per_class", "test_per_class", "seed")


def _register_datasets() -> None:
    """Every world task as dataset ``world-<task>`` (``load_dataset('world-object', test_per_class=20)``)."""
    from vlprompt.data.registry import register_dataset

    for task_name in WORLD_TASKS:

        def loader(root: str | None = None, _task: str = task_name, **options) -> TaskData:
            if root is not None:
                raise ConfigError(
                    f"Dataset 'world-{_task}' is generated, not read from disk: drop root={root!r}. Its options "
                    f"are {', '.join(LOADER_OPTIONS)}."
                )
            unknown = sorted(set(options) - set(LOADER_OPTIONS))
            if unknown:
                raise ConfigError(
                    f"Dataset 'world-{_task}' has no option {', '.join(unknown)}; its options are "
                    f"{', '.join(LOADER_OPTIONS)}."
                )
            return load_world_task(_task, **options)

        register_dataset(f"world-{task_name}")(loader)


_register_datasets()
