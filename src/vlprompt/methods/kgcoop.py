"""KgCoOp: CoOp with a pull of each learned class feature towards its hand-crafted feature."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.data.base import LabelSpace
from vlprompt.losses import kg_distance
from vlprompt.methods.base import register_method
from vlprompt.methods.clip import ClipMethod
from vlprompt.methods.coop import (
    COOP_RECIPE,
    CoOpConfig,
    context_class_dependent,
    context_outputs,
    context_prompt,
)


@dataclass
class KgCoOpConfig(CoOpConfig):
    """KgCoOp: CoOp's options plus the weight of the knowledge-guided text loss.

    The context starts as the official KgCoOp code starts it: the 4 tokens of "a photo of a" (its prompt
    learner uses those words whenever CTX_INIT is set, which every released config does).
    """

    n_ctx: int = field(default=4, metadata={"help": "learned context tokens (KgCoOp's official start: 4)", "range": (1, 76)})
    ctx_init: str = field(
        default="a photo of a",
        metadata={"help": "words to start from; KgCoOp's official code always starts from 'a photo of a'"},
    )
    weight: float = field(
        default=8.0,
        metadata={"help": "w in L = L_ce + w·(1 − mean_c cos(t_c, t_c^hand)); the paper uses 8", "range": (0.0, None)},
    )


@register_method("kgcoop")
class KgCoOp(ClipMethod):
    config_class = KgCoOpConfig
    train_defaults: ClassVar[dict[str, Any]] = COOP_RECIPE

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: KgCoOpConfig) -> None:
        super().__init__(backbone, labels, config)
        self.prompt = context_prompt(self.text, labels, config)

    def set_labels(self, labels: LabelSpace) -> None:
        super().set_labels(labels)
        self.prompt.set_classnames(self.text, labels.classnames)

    def class_dependent_parameter_names(self) -> set[str]:
        return context_class_dependent(self.config)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.prompt.ctx]

    def forward(self, batch: dict) -> dict:
        outputs = context_outputs(self, batch)
        loss = outputs["loss"]
        result = {"logits": outputs["logits"]}
        if loss is not None:
            hand = self.hand_features().to(outputs["class_features"].device)
            result["loss_kg"] = kg_distance(outputs["class_features"], hand)
            loss = loss + self.config.weight * result["loss_kg"]
        result["loss"] = loss
        return result
