"""The method contract: an nn.Module whose forward(batch) returns {"loss", "logits", ...}.

A batch is a dict with "label" [B] and either "image" [B,3,H,W] or, when the method declares a frozen
image encoder, "features" [B,D] precomputed by the feature cache. Every hook the single Trainer,
checkpointing and evaluation call is declared on ``PromptMethod`` with its default; callers call them
plainly, so no method needs its own trainer and no caller asks whether a hook exists.
"""
from __future__ import annotations

import dataclasses
from abc import ABCMeta, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import build_config
from vlprompt.core.registry import Registry
from vlprompt.data.base import LabelSpace

if TYPE_CHECKING:
    from vlprompt.data.base import ImageDataset, TaskData

# Norm layers whose buffers (running mean / var) training changes.
_RUNNING_STAT_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _import_method_modules() -> None:
    from vlprompt.methods import import_all

    import_all()


METHODS: Registry[type[PromptMethod]] = Registry("method", populate=_import_method_modules)


def register_method(name: str):
    """Register a method class under ``name``. The class must be complete: a ``config_class`` dataclass and
    every abstract hook (``forward`` at least) implemented, so a half-written method fails at import, not
    halfway through a run."""

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, PromptMethod)):
            raise TypeError(f"@register_method('{name}') decorates {cls!r}, which is not a PromptMethod subclass.")
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:
            raise TypeError(
                f"Method '{name}' ({cls.__qualname__}) cannot be registered: it does not implement "
                f"{', '.join(missing)} (declared abstract on PromptMethod in vlprompt/methods/base.py)."
            )
        if cls.config_class is None or not dataclasses.is_dataclass(cls.config_class):
            raise TypeError(
                f"Method '{name}' ({cls.__qualname__}) cannot be registered: set config_class to its options "
                "dataclass (an empty @dataclass when it has none)."
            )
        cls.method_name = name
        return METHODS.register(name)(cls)

    return decorator


class PromptMethod(nn.Module, metaclass=ABCMeta):
    """The method contract. Subclasses set ``config_class`` and implement ``forward``; every other hook the
    Trainer, checkpointing and evaluation call is declared below with a default that does nothing special, so
    a method overrides only what it changes and a reader sees the whole contract in one place.

    ``ABCMeta`` (nn.Module's own metaclass is ``type``) makes ``@abstractmethod`` binding: a class missing
    ``forward`` cannot be instantiated or registered.

    The backbone is held frozen and in eval mode; ``train()`` never flips it back to training mode
    unless the method itself unfreezes parts of it (full or partial fine-tuning).
    """

    method_name: ClassVar[str] = ""
    # The method's options dataclass (fields with help/range/choices metadata); required for registration.
    config_class: ClassVar[type | None] = None
    needs_text_tower: ClassVar[bool] = False
    # True when forward() can consume cached "features" instead of "image" (image tower frozen, no prompts in it):
    # the Trainer then trains from cached features and evaluation encodes each image once.
    uses_image_features: ClassVar[bool] = False
    # The task types (LabelSpace.task_type) the method can be built for; image methods with a task head
    # (methods/heads.py) add "segmentation".
    task_types: ClassVar[tuple[str, ...]] = ("classification",)
    # Recommended TrainConfig fields for this method (lr, epochs, optimizer...); user settings override them.
    train_defaults: ClassVar[dict[str, Any]] = {}
    # How class names are cleaned before tokenising, as the method's official code does (data/base.py):
    # "underscores" ('_' -> ' ', the CoOp family) or "none" (as given: CLAP).
    classname_cleaning: ClassVar[str] = "underscores"

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.labels = labels.with_cleaning(self.classname_cleaning)
        self.config = config
        backbone.weights_hash()  # fixed now, before any method trains backbone weights: the artifact identity
        backbone.freeze()
        self.visual = backbone.visual
        if backbone.text is not None:
            self.text = backbone.text

    # ----- the forward pass -----
    @abstractmethod
    def forward(self, batch: dict) -> dict:
        """``{"loss": scalar or None (no labels), "logits": [B, C], ...}`` for a batch holding "image" [B,3,H,W]
        or, when ``uses_image_features``, "features" [B, D]. Extra keys (loss terms, class features) are read
        by this method's own ``grad_parts`` and logged nowhere else."""

    def predict(self, batch: dict) -> torch.Tensor:
        """Logits for evaluation; override when inference differs from the training forward."""
        return self.forward(batch)["logits"]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen image features that ``forward`` accepts as batch["features"] (cached by the Trainer and by
        evaluation when ``uses_image_features``). Override only when the features are not the backbone's."""
        return self.visual(images)

    # ----- what trains and what a checkpoint holds -----
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The tensors the optimizer steps, in a fixed order (gradient parts follow it). Default: every
        parameter with requires_grad; override to pin the order or to train nothing (zero-shot)."""
        return [p for p in self.parameters() if p.requires_grad]

    def lr_scales(self) -> list[float]:
        """Per tensor of ``trainable_parameters()`` (same order), the multiplier of the scheduled learning rate.
        Default 1 for every tensor; a segmentation head trained beside tower weights runs at SETR's x10
        (methods/heads.py ``head_lr_scales``), since it starts from scratch while they start pretrained."""
        return [1.0] * len(self.trainable_parameters())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what was trained: the tensors a prompt checkpoint holds, with the running statistics that training
        updates in trained BatchNorm layers (a SETR segmentation head's: without them it predicts otherwise).
        Override when fitted, non-trained tensors belong in the checkpoint too (Tip-Adapter's cache)."""
        names = {id(p) for p in self.trainable_parameters()}
        state = {n: p.detach().clone() for n, p in self.named_parameters() if id(p) in names}
        for prefix, module in self.named_modules():
            if isinstance(module, _RUNNING_STAT_NORMS) and any(p.requires_grad for p in module.parameters()):
                state.update({f"{prefix}.{n}": b.detach().clone() for n, b in module.named_buffers(recurse=False)})
        return state

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """The live tensors under the names ``trainable_state_dict`` uses: where a checkpoint, a resume state or
        the best validation copy is loaded back."""
        return {**dict(self.named_buffers()), **dict(self.named_parameters())}

    def class_dependent_parameter_names(self) -> set[str]:
        """Trained tensors tied to this class list (a head, class-specific context): a checkpoint holding them
        refuses to load onto other classes. Default: everything under a submodule called ``head``."""
        return {n for n, p in self.named_parameters() if p.requires_grad and n.split(".")[0] == "head"}

    def resize_for_checkpoint(self, shapes: dict[str, tuple]) -> None:
        """Called by ``load_prompts`` before copying tensors, with each checkpoint tensor's shape. Override when
        a tensor's size comes from the training data (Tip-Adapter's cache) rather than from the config, so the
        freshly built method can take the checkpoint's size. Default: sizes are fixed by the config."""
        return

    def set_labels(self, labels: LabelSpace) -> None:
        """Serve another class list (the new classes of base-to-new, a shift target) with the same trained
        tensors. Called by evaluation before predicting on other classes; override to rebuild what depends on
        the class names (tokenised prompts, caches) from ``self.labels`` (cleaned as ``classname_cleaning`` says)."""
        self.labels = labels.with_cleaning(self.classname_cleaning)

    # ----- Trainer hooks, in the order the Trainer calls them -----
    def setup(self, train_dataset: ImageDataset, trainer: Any) -> None:
        """Once per fit, before anything trains, with the training split under the eval transform. Override to
        initialise parameters from data (SPT's prototype prompts). Default: nothing."""
        return

    def prepare(self, task: TaskData, trainer: Any) -> None:
        """Once per fit, after ``setup`` and before the optimizer exists, with the whole task; override to build
        state from the task's cached features (Tip-Adapter's cache, CLAP's class weights). Default: nothing."""
        return

    def grad_parts(self, outputs: dict, params: list[torch.Tensor]) -> list[list[torch.Tensor | None]]:
        """Gradients of one micro-batch as one or more parts, each a list aligned with ``params`` (None where a
        tensor got no gradient). The Trainer sums each part over micro-batches and ranks separately, then hands
        the sums to ``combine_grads``. Override when the update is not the plain gradient of the loss (ProGrad
        keeps the CE and KL gradients apart). Default: one part, the gradient of ``outputs["loss"]``."""
        return [list(torch.autograd.grad(outputs["loss"], params, allow_unused=True))]

    def combine_grads(self, parts: list[list[torch.Tensor | None]]) -> list[torch.Tensor | None]:
        """The gradient of the whole optimizer step from the summed parts of ``grad_parts`` (all micro-batches,
        all ranks). Default: the single part."""
        return parts[0]

    def on_step_end(self, step: int, trainer: Any) -> None:
        """After each optimizer step (``step`` counts steps taken). Override for per-step state updates
        (moving averages, prompt re-projection). Default: nothing."""
        return

    def on_epoch_end(self, epoch: int, trainer: Any) -> None:
        """After each training epoch (0-based), before validation. Override for per-epoch state (PromptSRC's
        Gaussian prompt aggregation). Default: nothing."""
        return

    def on_fit_end(self, task: TaskData, trainer: Any) -> None:
        """After training (and best-val restore), before the checkpoint is saved; also when nothing trains.
        Override to fit what is chosen on validation (Tip-Adapter's α/β search). Default: nothing."""
        return

    # ----- modes -----
    def frozen_modules(self) -> Iterable[nn.Module]:
        """Modules kept in eval mode by ``train()`` while none of their parameters trains (dropout, norms)."""
        return self.backbone.modules()

    def train(self, mode: bool = True) -> PromptMethod:
        super().train(mode)
        for module in self.frozen_modules():
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self

    def predict_images(self, images: Sequence, topk: int = 5, **options: Any) -> list[dict]:
        """Top-k labels and probabilities for PIL images or image paths (see vlprompt.eval.image_predict)."""
        from vlprompt.eval.image_predict import predict_images

        return predict_images(self, images, topk=topk, **options)

    @staticmethod
    def cross_entropy(logits: torch.Tensor, batch: dict) -> torch.Tensor | None:
        label = batch.get("label")
        return None if label is None else nn.functional.cross_entropy(logits, label)


def create_method(name: str, backbone: Backbone, labels: LabelSpace, **overrides: Any) -> PromptMethod:
    """Build a registered method by name; ``overrides`` are fields of its config dataclass."""
    from vlprompt.methods import import_all

    import_all()
    cls = METHODS.get(name)
    if labels.task_type not in cls.task_types:
        from vlprompt.core.errors import ConfigError

        supported = sorted(n for n in METHODS.names() if labels.task_type in METHODS.get(n).task_types)
        raise ConfigError(
            f"Method '{name}' does not support {labels.task_type} tasks (it supports {', '.join(cls.task_types)}). "
            f"For {labels.task_type}, use one of: {', '.join(supported)}."
        )
    config = build_config(cls.config_class, overrides, where=f"method '{name}'")
    if cls.needs_text_tower and backbone.text is None:
        from vlprompt.core.errors import ConfigError

        raise ConfigError(
            f"Method '{name}' needs a CLIP backbone with a text tower; '{backbone.backbone_id}' has only an image "
            "tower. Use a CLIP backbone (open_clip:..., hf:..., world:clip) or an image-only method (linear, vpt-*)."
        )
    return cls(backbone, labels, config)


def method_names() -> list[str]:
    return METHODS.names()

