"""LoRA on a frozen ViT's attention (Hu et al., 2022), the visual PETL baseline: W + s·B·A on q and v by default.

The LoRA definition is ``prompts/lora.py``'s (A kaiming-uniform a = sqrt 5, B zero, dropout on the branch input); the
scaling defaults to the LoRA paper's alpha / r (loralib, which the ViT PETL benchmarks use) with rank 8 and alpha 8
(scaling 1). timm ViTs pack q, k, v in one Linear d -> 3d: the deltas add to its q / v slices (the ``attn_qkv``
site); open_clip towers keep them in ``nn.MultiheadAttention`` (the ``attention_projections`` seam). Only the
image tower is adapted; ``clip-lora`` is the CLIP method that adapts both towers. The head is timm's Linear.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from vlprompt.core.errors import ConfigError
from vlprompt.methods.base import register_method
from vlprompt.methods.heads import HEAD_OPTION_HELP
from vlprompt.methods.peft import TowerTuningMethod
from vlprompt.prompts.lora import PROJECTIONS, RANK_SCALINGS, attach_lora, attach_lora_packed, set_merged


@dataclass
class ViTLoRAConfig:
    """LoRA on the image tower's attention projections."""
    head: dict = field(default_factory=dict, metadata={"help": HEAD_OPTION_HELP})

    rank: int = field(default=8, metadata={"help": "LoRA rank r", "range": (1, None)})
    alpha: float = field(default=8.0, metadata={"help": "LoRA alpha (scaling alpha / r by default)", "range": (0.0, None)})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch input, training only",
                                                  "range": (0.0, 0.99)})
    rank_scaling: str = field(default="rank", metadata={
        "help": "rank: scaling alpha / r (LoRA paper, loralib); sqrt: alpha / sqrt(r) (CLIP-LoRA)",
        "choices": RANK_SCALINGS})
    params: list[str] = field(default_factory=lambda: ["q", "v"], metadata={
        "help": "projections among q, k, v, o to adapt (LoRA paper: q and v)"})

    def __post_init__(self) -> None:
        unknown = [p for p in self.params if p not in PROJECTIONS]
        if unknown or not self.params:
            raise ConfigError(f"ViTLoRAConfig.params = {self.params}: choose among {list(PROJECTIONS)} (default q,v).")


@register_method("lora")
class ViTLoRA(TowerTuningMethod):
    """Only the LoRA matrices and the head train; ``set_merged(True)`` runs (W + s·B·A) x, the same function."""

    config_class = ViTLoRAConfig
    head_kind = "timm"
    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def attach(self, tower: nn.Module) -> list[nn.Module]:
        c = self.config
        lora = (c.params, c.rank, c.alpha, c.dropout, c.rank_scaling)
        self.wrappers: list[nn.Module] = []
        for index in range(tower.num_blocks):
            sites = tower.block_sites(index)
            if sites.has("attn_qkv"):
                self.wrappers += attach_lora_packed(sites, *lora)
            else:
                self.wrappers += attach_lora(tower.attention_projections(index), *lora)
        return list(self.wrappers)

    def set_merged(self, merged: bool) -> None:
        set_merged(self.wrappers, merged)
