"""Bottleneck adapters in a frozen ViT: VPT's Adapter row (Pfeiffer placement) and AdaptFormer.

``adapter``: KMnP/vpt ``MODEL.TRANSFER_TYPE: adapter`` with ``MODEL.ADAPTER`` (style Pfeiffer, reduction factor 8):
after every block's MLP, ``y + up(GELU(down(y)))``, all adapter tensors zero-initialised as the official code does
(which leaves only ``up.bias`` with a gradient: see prompts/adapters.py; ``init=lora`` is the non-official variant
that learns the bottleneck). The head is the official VPT head.

``adaptformer``: ShoufaChen/AdaptFormer (``main_image.py``: parallel, bottleneck 64, scalar 0.1, adapter dropout 0.1,
init "lora", no adapter LayerNorm): a scaled ReLU bottleneck beside every MLP, reading the MLP sub-layer's
un-normalised input. The head is the official MAE-style probe (BatchNorm1d without affine + Linear).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import register_method
from vlprompt.methods.heads import HEAD_OPTION_HELP
from vlprompt.methods.peft import TowerTuningMethod
from vlprompt.prompts.adapters import ADAPTER_INITS, BRANCH_INPUTS, attach_adaptformer, attach_pfeiffer


@dataclass
class AdapterConfig:
    """VPT's Adapter baseline (official ``MODEL.ADAPTER``)."""
    head: dict = field(default_factory=dict, metadata={"help": HEAD_OPTION_HELP})

    reduction_factor: int = field(
        default=8, metadata={"help": "bottleneck width = d / reduction_factor (official REDUCATION_FACTOR 8)",
                             "range": (1, None)},
    )
    init: str = field(
        default="zeros",
        metadata={"help": "zeros: every adapter tensor starts at 0, as the official code (only up.bias then learns); "
                          "lora: kaiming-uniform down, zero up (not official, the bottleneck learns)",
                  "choices": ADAPTER_INITS},
    )


@register_method("adapter")
class PfeifferAdapterTuning(TowerTuningMethod):
    """A Pfeiffer adapter after every block's MLP; the adapters and the head train."""

    config_class = AdapterConfig

    def attach(self, tower: nn.Module) -> list[nn.Module]:
        if tower.width // self.config.reduction_factor < 1:
            raise ConfigError(
                f"AdapterConfig.reduction_factor = {self.config.reduction_factor} leaves no bottleneck for width "
                f"{tower.width}; use a factor <= {tower.width}."
            )
        attach_pfeiffer(tower, self.config.reduction_factor, self.config.init)
        return []


@dataclass
class AdaptFormerConfig:
    """AdaptFormer's options (official ``main_image.py`` values as defaults)."""
    head: dict = field(default_factory=dict, metadata={"help": HEAD_OPTION_HELP})

    bottleneck: int = field(default=64, metadata={"help": "bottleneck width of the parallel branch (official ffn_num 64)",
                                                  "range": (1, None)})
    scale: float = field(default=0.1, metadata={"help": "scale s of the branch's output (official ffn_adapter_scalar 0.1)",
                                                "range": (0.0, None)})
    dropout: float = field(default=0.1, metadata={"help": "dropout inside the branch, after the ReLU (official 0.1)",
                                                  "range": (0.0, 0.99)})
    branch_input: str = field(
        default="residual",
        metadata={"help": "residual: the branch reads the un-normalised MLP input (official code); normed: it reads "
                          "LN(x), as we read the paper's equation", "choices": BRANCH_INPUTS},
    )


@register_method("adaptformer")
class AdaptFormerTuning(TowerTuningMethod):
    """AdaptFormer's scaled bottleneck beside every MLP; the branches and a Linear head train."""

    config_class = AdaptFormerConfig
    head_kind = "mae-probe"
    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0,
                                                "scale_lr_by_batch": True}

    def attach(self, tower: nn.Module) -> list[nn.Module]:
        c = self.config
        branches = attach_adaptformer(tower, c.bottleneck, c.scale, c.dropout, c.branch_input)
        return [branch.dropout for branch in branches]
