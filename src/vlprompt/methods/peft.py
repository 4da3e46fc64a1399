"""Parameter-efficient tuning inside a frozen ViT: the shared model, and the rows that train the tower's own tensors.

``TowerTuningMethod`` takes a private copy of the image tower that shares every frozen tensor with the caller's
backbone (``share_weights_copy``: no memory cost, the caller's tower and its feature-cache key untouched), lets a
subclass attach or unfreeze something in that copy through ``prompts/adapters.py`` (which reaches the tower only
through its block / tower sites), and reads the features out under a head. The tower stays in eval mode; only the
added modules follow train/eval (AdaptFormer's and LoRA's dropout).

Heads (``build_head``), each as its own code builds it: the VPT paper's protocols (bias, CLS-token tuning, adapter,
prompt + bias, sidetune, Mlp-k) use the official VPT head (``prompts/heads.py``: kaiming fan-out weights,
prior-probability bias); SSF, LoRA and LayerNorm tuning a timm ViT head (Linear, truncated-normal std 0.02, zero
bias); AdaptFormer its MAE linear-probe head (BatchNorm1d without affine, eps 1e-6, then a Linear with
truncated-normal std 0.01 weights and zero bias; ``main_image.py``).

Rows here: ``bias`` (BitFit; KMnP/vpt ``tinytl-bias``), ``ln-tune`` (LayerNorm affine parameters), ``cls-tune``
(KMnP/vpt ``cls``: the class token).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import PromptMethod, register_method
from vlprompt.methods.heads import HEAD_OPTION_HELP, dense_forward, head_lr_scales, task_head
from vlprompt.prompts.adapters import tune_biases, tune_class_token, tune_layernorms
from vlprompt.prompts.heads import VPTHead, frozen_statistics, mae_probe_head
from vlprompt.prompts.lora import share_weights_copy
from vlprompt.prompts.visual import prompted_block_outputs

HEAD_KINDS = ("vpt", "timm", "mae-probe")


def build_head(kind: str, feature_dim: int, num_classes: int, mlp_num: int = 0) -> nn.Module:
    """The official VPT head (``mlp_num`` hidden layers), a timm ViT head, or MAE's BatchNorm + Linear probe."""
    if kind == "vpt":
        return VPTHead(feature_dim, num_classes, mlp_num)
    if kind == "mae-probe":
        return mae_probe_head(feature_dim, num_classes)
    linear = nn.Linear(feature_dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.02)
    nn.init.zeros_(linear.bias)
    return linear


class TowerTuningMethod(PromptMethod, abc.ABC):
    """A head on a private, partly trainable copy of the image tower; subclasses say what ``attach`` changes."""

    head_kind: ClassVar[str] = "vpt"
    task_types: ClassVar[tuple[str, ...]] = ("classification", "segmentation")
    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: Any) -> None:
        super().__init__(backbone, labels, config)
        self.visual = share_weights_copy(backbone.visual)
        self.mode_following: list[nn.Module] = self.attach(self.visual)
        self.head = task_head(self.visual, labels, config.head,
                              lambda: build_head(self.head_kind, self.visual.feature_dim, labels.num_classes))
        self.dense = labels.task_type == "segmentation"

    @abc.abstractmethod
    def attach(self, tower: nn.Module) -> list[nn.Module]:
        """Make the tuned tensors of ``tower`` (a private copy) trainable or add modules to it; return the modules
        whose train/eval mode follows the method's (dropout inside added branches), [] when none."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def lr_scales(self) -> list[float]:
        """A segmentation head at SETR's 10x the lr of the tuned tower tensors (methods/heads.py)."""
        return head_lr_scales(self.trainable_parameters(), self.head, 10.0)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained tensors plus the head's BatchNorm statistics (VPT Mlp heads, AdaptFormer's probe)."""
        return {**super().trainable_state_dict(), **frozen_statistics(self.head, "head")}

    def forward(self, batch: dict) -> dict:
        if self.dense:  # SETR on the adapted tower's patch grid (methods/heads.py)
            images = batch["image"]
            return dense_forward(self.head, self.visual,
                                 lambda blocks: prompted_block_outputs(self.visual, None, images, blocks), 0, batch)
        logits = self.head(self.encode(batch["image"]))
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}

    def train(self, mode: bool = True) -> TowerTuningMethod:
        super().train(mode)
        self.visual.eval()  # the frozen tower keeps eval behaviour, as the official code forces (froze_enc)
        for module in self.mode_following:
            module.train(mode)
        return self


@dataclass
class HeadOnlyConfig:
    """The options of a tuning method whose trained tensors the method itself fixes (bias, ln-tune, cls-tune, ssf):
    only the task head's."""
    head: dict = field(default_factory=dict, metadata={"help": HEAD_OPTION_HELP})


@register_method("bias")
class BiasTuning(TowerTuningMethod):
    """Only the tower's biases (Linear, Conv, norms, attention in-projection) and the head train (official
    ``tinytl-bias``)."""

    config_class = HeadOnlyConfig

    def attach(self, tower: nn.Module) -> list[nn.Module]:
        tune_biases(tower)
        return []


@register_method("ln-tune")
class LayerNormTuning(TowerTuningMethod):
    """Only the LayerNorms' affine parameters and the head train."""

    config_class = HeadOnlyConfig
    head_kind = "timm"

    def attach(self, tower: nn.Module) -> list[nn.Module]:
        tune_layernorms(tower)
        return []


@register_method("cls-tune")
class ClassTokenTuning(TowerTuningMethod):
    """Only the class token (the tower's ``class_token`` site) and the head train (official transfer type ``cls``)."""

    config_class = HeadOnlyConfig

    def attach(self, tower: nn.Module) -> list[nn.Module]:
        tune_class_token(tower)
        return []
