"""Fine-tuning baselines for the VPT table: full fine-tuning and partial-k (last k blocks + head).

Both train a private copy of the image tower, so the caller's backbone object (shared with other methods, and
keyed by its weights hash in the feature cache) is never modified. Their checkpoints hold the tuned tower
weights: that is what these baselines train, and why prompt methods are cheaper to store.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import ValidatedConfig, option
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import PromptMethod, register_method
from vlprompt.methods.heads import HEAD_OPTION_HELP, dense_forward, task_head


@dataclass
class FinetuneConfig(ValidatedConfig):
    """Full fine-tuning: every tower weight and the head train; its only option is the segmentation head."""

    head: dict = option(help=HEAD_OPTION_HELP, default_factory=dict)


@dataclass
class PartialConfig(ValidatedConfig):
    """Partial fine-tuning: the last k blocks and the head train; the blocks before them stay frozen."""

    k: int = option(1, help="how many of the last blocks train (with the head)", range=(1, None))
    head: dict = option(help=HEAD_OPTION_HELP, default_factory=dict)


class _TunedTower(PromptMethod):
    """A task head on a trainable copy of the image tower; subclasses choose which blocks train."""

    task_types: ClassVar[tuple[str, ...]] = ("classification", "segmentation")

    def __init__(self, backbone: Backbone, labels: LabelSpace, config, tuned_blocks: int | None) -> None:
        """``tuned_blocks`` None tunes the whole tower (embedding and final norm too), else the last k blocks."""
        super().__init__(backbone, labels, config)
        self.visual = copy.deepcopy(backbone.visual)
        self.head = task_head(self.visual, labels, config.head)
        self.dense = labels.task_type == "segmentation"
        self.tune_all = tuned_blocks is None
        self.first_tuned = 0 if tuned_blocks is None else self.visual.num_blocks - tuned_blocks
        if self.tune_all:
            self.visual.requires_grad_(True)
        else:
            for block in list(self.visual.block_modules())[self.first_tuned :]:
                block.requires_grad_(True)

    def block_outputs(self, images: torch.Tensor, blocks: tuple[int, ...]) -> dict[int, torch.Tensor]:
        """The tokens leaving each block in ``blocks``; the frozen part of the tower runs without autograd (no
        activations are kept for it)."""
        outputs = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.tune_all):
            tokens = self.visual.embed(images)
            for index in range(self.first_tuned):
                tokens = self.visual.block(index, tokens)
                outputs[index] = tokens
        for index in range(self.first_tuned, self.visual.num_blocks):
            tokens = self.visual.block(index, tokens)
            outputs[index] = tokens
        return {b: outputs[b] for b in blocks}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled image features (the classification readout's input)."""
        last = self.visual.num_blocks - 1
        return self.visual.finalize(self.block_outputs(images, (last,))[last])

    def forward(self, batch: dict) -> dict:
        images = batch["image"]
        if self.dense:
            return dense_forward(self.head, self.visual, lambda blocks: self.block_outputs(images, blocks), 0, batch)
        logits = self.head(self.encode(images))
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}

    def train(self, mode: bool = True) -> _TunedTower:
        super().train(mode)
        if not self.tune_all:  # frozen blocks and the embedding keep eval behaviour
            self.visual.eval()
            for block in list(self.visual.block_modules())[self.first_tuned :]:
                block.train(mode)
        return self


@register_method("finetune")
class FullFinetune(_TunedTower):
    """Every weight of the image tower trains, with the head."""

    config_class = FinetuneConfig
    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4}

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: FinetuneConfig) -> None:
        super().__init__(backbone, labels, config, tuned_blocks=None)


@register_method("partial-k")
class PartialFinetune(_TunedTower):
    """The last ``k`` blocks and the head train (VPT's partial-k baseline)."""

    config_class = PartialConfig
    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 1e-4}

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: PartialConfig) -> None:
        if config.k > backbone.visual.num_blocks:
            raise ConfigError(
                f"PartialConfig.k = {config.k}, but '{backbone.backbone_id}' has only {backbone.visual.num_blocks} "
                f"blocks. Use k <= {backbone.visual.num_blocks} (k = {backbone.visual.num_blocks} tunes every block, "
                "but not the embedding: use method 'finetune' for that)."
            )
        super().__init__(backbone, labels, config, tuned_blocks=config.k)
