"""The shape every dataset takes once loaded: samples with integer labels, plus the text side of the task."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset

from vlprompt.errors import ConfigError


@dataclass
class LabelSpace:
    """Class names and the hand-crafted text of a task: what a CLIP method needs to build class features.

    ``templates[0]`` is the task's single hand-crafted template (used by zero-shot CLIP, ProGrad, KgCoOp);
    all of ``templates`` form the ensemble. ``template_groups`` maps a group name (e.g. a style) to its
    templates, for the mixture of prompt experts.
    """

    classnames: list[str]
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    template_groups: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.classnames:
            raise ConfigError("LabelSpace.classnames is empty: a task needs at least one class name.")
        if not self.templates:
            raise ConfigError("LabelSpace.templates is empty: give at least one template such as 'a photo of a {}.'")
        for template in [*self.templates, *(t for group in self.template_groups.values() for t in group)]:
            if template.count("{}") != 1:
                raise ConfigError(
                    f"Template {template!r} must contain exactly one '{{}}' where the class name goes."
                )

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def subset(self, labels: Sequence[int]) -> "LabelSpace":
        return LabelSpace([self.classnames[i] for i in labels], list(self.templates), dict(self.template_groups))


class ImageDataset(Dataset):
    """A list of (image source, label) pairs; ``load`` turns a source into a PIL image.

    ``labels`` is readable without decoding any image, so few-shot sampling stays cheap.
    """

    def __init__(
        self,
        sources: Sequence,
        labels: Sequence[int],
        load: Callable[[object], Image.Image],
        transform: Callable | None = None,
        name: str = "",
    ) -> None:
        if len(sources) != len(labels):
            raise ValueError("sources and labels differ in length")
        self.sources = list(sources)
        self.labels = [int(label) for label in labels]
        self.load = load
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int):
        image = self.load(self.sources[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]

    def subset(self, indices: Sequence[int]) -> "ImageDataset":
        return ImageDataset(
            [self.sources[i] for i in indices], [self.labels[i] for i in indices], self.load, self.transform, self.name
        )

    def with_transform(self, transform: Callable | None) -> "ImageDataset":
        return ImageDataset(self.sources, self.labels, self.load, transform, self.name)


@dataclass
class TaskData:
    """A task ready for training: splits plus the label space. ``val`` may be None (no selection then)."""

    name: str
    labels: LabelSpace
    train: ImageDataset
    test: ImageDataset
    val: ImageDataset | None = None
    meta: dict = field(default_factory=dict)
