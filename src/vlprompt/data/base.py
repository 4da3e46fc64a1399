"""The shape every dataset takes once loaded: samples with integer labels, plus the text side of the task."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from PIL import Image
from torch.utils.data import Dataset

from vlprompt.core.errors import ConfigError

CLASSNAME_CLEANINGS = ("underscores", "none")
# CLIP's plain prompt: the template of a task that names none (a user's folders, CSV, FGVC, VTAB, masks).
DEFAULT_TEMPLATE = "a photo of a {}."


def display_name(name: str) -> str:
    """A class or prompt word as CLIP should read it: '_' -> ' ' (the official CoOp code's only cleaning)."""
    return str(name).replace("_", " ")


def clean_classname(name: str, cleaning: str) -> str:
    """``"underscores"``: '_' -> ' ' (the CoOp family's official code); ``"none"``: as given (official CLAP)."""
    if cleaning not in CLASSNAME_CLEANINGS:
        raise ConfigError(f"Class-name cleaning {cleaning!r} is unknown; choose one of {list(CLASSNAME_CLEANINGS)}.")
    return display_name(name) if cleaning == "underscores" else str(name)


def refuse_same_names(raw: Sequence[str], cleaned: Sequence[str]) -> None:
    """Two classes whose cleaned names are equal ('dark_red' and 'dark red') would get identical text prompts, so
    a CLIP method could never tell them apart: refuse them, naming both as given."""
    first: dict[str, int] = {}
    for index, name in enumerate(cleaned):
        if name in first:
            other = first[name]
            raise ConfigError(
                f"Class names {raw[other]!r} (class {other}) and {raw[index]!r} (class {index}) both read as "
                f"{name!r} once underscores become spaces, so their prompts would be identical. Rename or merge "
                "one of the two classes (a folder, a label in the CSV or split file, or a --classnames entry)."
            )
        first[name] = index


@dataclass
class LabelSpace:
    """Class names and the hand-crafted text of a task: what a CLIP method needs to build class features.

    Class names are display names: by default (``cleaning="underscores"``) underscores become spaces here, once,
    for every dataset format and for names given from Python (``american_bulldog`` -> ``american bulldog``,
    ``Apply_Eye_Makeup`` -> ``Apply Eye Makeup``), as every official CoOp-family code path does before
    tokenising. A method whose official code tokenises the names as given (CLAP) declares
    ``classname_cleaning = "none"`` and receives ``with_cleaning("none")``: ``raw_classnames`` keeps the names
    as given for that. Folder and label names on disk stay as they are (``TaskData.meta["raw_classnames"]``).
    ``templates[0]`` is the task's single hand-crafted template (used by zero-shot CLIP, ProGrad, KgCoOp);
    all of ``templates`` form the ensemble. ``template_groups`` maps a group name (e.g. a style) to its
    templates, for the mixture of prompt experts.
    """

    # Which task a label space describes: "classification" here, "segmentation" in data/segmentation.py. Methods
    # choose their head by it (methods/heads.py) and refuse task types they do not support.
    task_type: ClassVar[str] = "classification"
    classnames: list[str]
    templates: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])
    template_groups: dict[str, list[str]] = field(default_factory=dict)
    cleaning: str = "underscores"
    raw_classnames: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.raw_classnames = [str(name) for name in self.classnames]
        self.classnames = [clean_classname(name, self.cleaning) for name in self.raw_classnames]
        if not self.classnames:
            raise ConfigError("LabelSpace.classnames is empty: a task needs at least one class name.")
        refuse_same_names(self.raw_classnames, self.classnames)
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

    def task_fields(self) -> dict:
        """What a checkpoint must store besides names and templates to rebuild this label space (none here)."""
        return {}

    @property
    def sampling_classes(self) -> int:
        """How many values ``ImageDataset.labels`` takes: few-shot sampling draws k items of each. One per class
        here; segmentation items carry no single class, so k-shot there means k images."""
        return self.num_classes

    def subset(self, labels: Sequence[int]) -> LabelSpace:
        names = [self.raw_classnames[i] for i in labels]
        return LabelSpace(names, list(self.templates), dict(self.template_groups), self.cleaning)

    def with_cleaning(self, cleaning: str) -> LabelSpace:
        """The same classes with names cleaned as ``cleaning`` says (from the names as given)."""
        if cleaning == self.cleaning:
            return self
        return LabelSpace(list(self.raw_classnames), list(self.templates), dict(self.template_groups), cleaning)


class ImageDataset(Dataset):
    """A list of (image source, label) pairs; ``load`` turns a source into a PIL image.

    ``labels`` is readable without decoding any image, so few-shot sampling stays cheap. ``task_type`` says
    which transforms and which evaluation apply (eval/tasks.py); segmentation's subclass yields (image, mask).
    """

    task_type: ClassVar[str] = "classification"

    def __init__(
        self,
        sources: Sequence,
        labels: Sequence[int],
        load: Callable[[object], Image.Image],
        transform: Callable | None = None,
        name: str = "",
        ids: Sequence[str] | None = None,
    ) -> None:
        if len(sources) != len(labels):
            raise ValueError("sources and labels differ in length")
        self.sources = list(sources)
        self.labels = [int(label) for label in labels]
        self.load = load
        self.transform = transform
        self.name = name
        # Stable identifiers (relative paths for files): what few-shot index files record.
        self.ids = [str(i) for i in ids] if ids is not None else [
            str(s) if isinstance(s, (str, bytes)) or hasattr(s, "__fspath__") else str(k)
            for k, s in enumerate(self.sources)
        ]

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int):
        image = self.load(self.sources[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]

    def subset(self, indices: Sequence[int], name: str | None = None) -> ImageDataset:
        return ImageDataset(
            [self.sources[i] for i in indices],
            [self.labels[i] for i in indices],
            self.load,
            self.transform,
            self.name if name is None else name,
            [self.ids[i] for i in indices],
        )

    def relabel(self, mapping: dict[int, int], name: str | None = None) -> ImageDataset:
        """Keep only items whose label is in ``mapping`` and renumber them (base/new splits)."""
        keep = [i for i, label in enumerate(self.labels) if label in mapping]
        subset = self.subset(keep, name)
        subset.labels = [mapping[label] for label in subset.labels]
        return subset

    def with_transform(self, transform: Callable | None) -> ImageDataset:
        return ImageDataset(self.sources, self.labels, self.load, transform, self.name, self.ids)


@dataclass
class TaskData:
    """A task ready for training: splits plus the label space. ``val`` may be None (no selection then)."""

    name: str
    labels: LabelSpace
    train: ImageDataset
    test: ImageDataset
    val: ImageDataset | None = None
    meta: dict = field(default_factory=dict)
