"""Zero-shot CLIP: s·cos(v, t_c) with t_c from the task's hand-crafted template (``zeroshot``) or the mean of
normalised features over all its templates (``zeroshot-ensemble``); nothing is trained."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from vlprompt.core.config import ValidatedConfig
from vlprompt.methods.base import register_method
from vlprompt.methods.clip import ClipMethod


@dataclass
class ZeroShotConfig(ValidatedConfig):
    """Zero-shot CLIP options."""

    class_chunk: int = field(
        default=256,
        metadata={"help": "class prompts per text-encoder call (bounds memory for many classes)", "range": (1, None)},
    )


@register_method("zeroshot")
class ZeroShot(ClipMethod):
    """Zero-shot CLIP with the task's single hand-crafted template; nothing is trained."""

    config_class = ZeroShotConfig

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, batch: dict) -> dict:
        return self.zero_shot_outputs(batch, ensemble=False)


@register_method("zeroshot-ensemble")
class ZeroShotEnsemble(ClipMethod):
    """Zero-shot CLIP with the mean of normalised class features over all of the task's templates."""

    config_class = ZeroShotConfig

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, batch: dict) -> dict:
        return self.zero_shot_outputs(batch, ensemble=True)
