"""The method contract: an nn.Module whose forward(batch) returns {"loss", "logits", ...}.

A batch is a dict with "label" [B] and either "image" [B,3,H,W] or, when the method declares a frozen
image encoder, "features" [B,D] precomputed by the feature cache. The single Trainer reads the optional
hooks below with their defaults; no method needs its own trainer.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.config_utils import build_config
from vlprompt.data.base import LabelSpace
from vlprompt.registry import Registry

# Norm layers whose buffers (running mean / var) training changes.
_RUNNING_STAT_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _import_method_modules() -> None:
    from vlprompt.methods import import_all

    import_all()


METHODS: Registry[type[PromptMethod]] = Registry("method", populate=_import_method_modules)


def register_method(name: str):
    def decorator(cls):
        cls.method_name = name
        return METHODS.register(name)(cls)

    return decorator


class PromptMethod(nn.Module):
    """Base class. Subclasses set ``config_class`` and implement ``forward``.

    The backbone is held frozen and in eval mode; ``train()`` never flips it back to training mode
    unless the method itself unfreezes parts of it (full or partial fine-tuning).
    """

    method_name: ClassVar[str] = ""
    config_class: ClassVar[type]
    needs_text_tower: ClassVar[bool] = False
    # True when forward() can consume cached "features" instead of "image" (image tower frozen, no prompts in it).
    uses_image_features: ClassVar[bool] = False
    # The task types (LabelSpace.task_type) the method can be built for; image methods with a task head
    # (methods/heads.py) add "segmentation".
    task_types: ClassVar[tuple[str, ...]] = ("classification",)
    # Recommended TrainConfig fields for this method (lr, epochs, optimizer...); user settings override them.
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.labels = labels
        self.config = config
        backbone.weights_hash()  # fixed now, before any method trains backbone weights: the artifact identity
        backbone.freeze()
        self.visual = backbone.visual
        if backbone.text is not None:
            self.text = backbone.text

    # ----- hooks read by the Trainer (defaults) -----
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen image features that ``forward`` accepts as batch["features"] (cacheable)."""
        return self.visual(images)

    def on_epoch_end(self, epoch: int, trainer: Any) -> None:
        return None

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what was trained: the tensors a prompt checkpoint holds (with the running statistics that training
        updates in trained BatchNorm layers, e.g. a SETR segmentation head's: without them it predicts otherwise)."""
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

    def frozen_modules(self) -> Iterable[nn.Module]:
        return self.backbone.modules()

    def train(self, mode: bool = True) -> PromptMethod:
        super().train(mode)
        for module in self.frozen_modules():
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self

    def predict(self, batch: dict) -> torch.Tensor:
        return self.forward(batch)["logits"]

    def predict_images(self, images: Sequence, topk: int = 5, **options: Any) -> list[dict]:
        """Top-k labels and probabilities for PIL images or image paths (see vlprompt.inference)."""
        from vlprompt.inference import predict_images

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
        from vlprompt.errors import ConfigError

        supported = sorted(n for n in METHODS.names() if labels.task_type in METHODS.get(n).task_types)
        raise ConfigError(
            f"Method '{name}' does not support {labels.task_type} tasks (it supports {', '.join(cls.task_types)}). "
            f"For {labels.task_type}, use one of: {', '.join(supported)}."
        )
    config = build_config(cls.config_class, overrides, where=f"method '{name}'")
    if cls.needs_text_tower and backbone.text is None:
        from vlprompt.errors import ConfigError

        raise ConfigError(
            f"Method '{name}' needs a CLIP backbone with a text tower; '{backbone.backbone_id}' has only an image "
            "tower. Use a CLIP backbone (open_clip:..., hf:..., world:clip) or an image-only method (linear, vpt-*)."
        )
    return cls(backbone, labels, config)


def method_names() -> list[str]:
    return METHODS.names()

