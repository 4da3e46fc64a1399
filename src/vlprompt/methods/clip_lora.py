"""CLIP-LoRA (Zanella & Ben Ayed, 2024): LoRA on the attention projections of both CLIP towers.

Official defaults (MaxZanella/CLIP-LoRA, ``run_utils.py`` / ``loralib``): rank 2, alpha 1 (scaling alpha/√r),
dropout 0.25 on the LoRA input, q, k and v of every block of both encoders; AdamW (lr 2e-4, betas (0.9, 0.999),
weight decay 0.01), cosine schedule, batch 32, 500 × shots iterations; class features from the task's single
hand-crafted template, re-encoded through the adapted text tower at every step; the last iterate is kept.

Where we differ, and why: the library counts epochs, not iterations — 500 × shots iterations of batch 32 are
16,000 / C epochs for C classes (the preset says so); the official cosine ends at 1e-6, ours at 0; the official
crop is RandomResizedCrop(scale 0.08-1), the library's ``crop_flip`` uses scale 0.5-1; the official trains in fp16
autocast, we train in the configured precision (fp32 by default).

LoRA attaches to private copies of the towers that share every frozen tensor with the caller's backbone
(prompts/lora.py), through the adapters' ``attention_projections`` seam. With LoRA in the image tower, image
features change during training, so they are not cached (``uses_image_features`` is False unless only the text
tower is adapted).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import ValidatedConfig, option
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import LabelSpace
from vlprompt.methods.base import register_method
from vlprompt.methods.clip import ClipMethod
from vlprompt.prompts.lora import PROJECTIONS, RANK_SCALINGS, attach_lora, set_merged, share_weights_copy
from vlprompt.prompts.text import EvalCache, encode_text_embeddings

ENCODERS = ("both", "vision", "text")


@dataclass
class CLIPLoRAConfig(ValidatedConfig):
    """``rank`` r (0 attaches no branch: the frozen model), ``alpha``, ``dropout`` on the LoRA input;
    ``rank_scaling``: "sqrt" (alpha/√r, the official code) or "rank" (alpha/r, the LoRA paper);
    ``encoders``: both | vision | text; ``blocks``: block indices to adapt (empty = all, the official "all");
    ``params``: projections among q, k, v, o (official default q, k, v); ``class_chunk``: class prompts per
    text-encoder call; ``logit_scale``: a fixed s in s·cos — the official code uses 100 (the clip-lora-paper preset
    sets it), None takes the checkpoint's exp(logit_scale) (100.03 on OpenAI weights)."""

    rank: int = option(2, help="LoRA rank r (0: no branch, the frozen model)", range=(0, None))
    alpha: float = option(1.0, help="LoRA alpha: the branch is scaled by alpha/sqrt(r) or alpha/r", range=(0.0, None))
    dropout: float = option(0.25, help="dropout on the LoRA branch input, training only", range=(0.0, 1.0))
    rank_scaling: str = option(
        "sqrt", help="sqrt: scaling alpha/sqrt(r) (official code); rank: alpha/r (LoRA paper)", choices=RANK_SCALINGS
    )
    encoders: str = option("both", help="towers to adapt", choices=ENCODERS)
    blocks: list[int] = option(help="block indices to adapt (empty: all, the official setting)", default_factory=list)
    params: list[str] = option(help="projections among q, k, v, o (official: q, k, v)",
                               default_factory=lambda: ["q", "k", "v"])
    class_chunk: int = option(256, help="class prompts per text-encoder call", range=(1, None))
    logit_scale: float | None = option(
        None,
        help="fixed logit scale s in s·cos (the official code: 100); unset: the checkpoint's exp(logit_scale)",
        range=(0.0, None),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        where = "CLIPLoRAConfig"
        unknown = [p for p in self.params if p not in PROJECTIONS]
        if unknown or not self.params:
            raise ConfigError(
                f"{where}.params = {self.params}: choose projections among {list(PROJECTIONS)} (official: q,k,v)."
            )


def _block_indices(requested: list[int], count: int, tower: str) -> list[int]:
    if not requested:
        return list(range(count))
    bad = [i for i in requested if not 0 <= i < count]
    if bad:
        raise ConfigError(
            f"CLIPLoRAConfig.blocks = {requested}: the {tower} tower has blocks 0..{count - 1}; {bad} do not exist."
        )
    return sorted(set(requested))


@register_method("clip-lora")
class CLIPLoRA(ClipMethod):
    """Only the LoRA matrices train; the image and text towers run with their low-rank updates every step."""

    config_class = CLIPLoRAConfig
    train_defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "adamw", "lr": 2e-4, "weight_decay": 1e-2, "batch_size": 32, "warmup_epochs": 0,
        "augment": "crop_flip",
    }

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: CLIPLoRAConfig) -> None:
        super().__init__(backbone, labels, config)
        if config.logit_scale is not None:  # the official code's fixed 100
            self.logit_scale = float(config.logit_scale)
        self.wrappers: list[nn.Module] = []
        lora = (config.params, config.rank, config.alpha, config.dropout, config.rank_scaling)
        if config.encoders in ("both", "vision"):
            self.visual = share_weights_copy(backbone.visual)
            for index in _block_indices(config.blocks, self.visual.num_blocks, "image"):
                self.wrappers += attach_lora(self.visual.attention_projections(index), *lora)
        if config.encoders in ("both", "text"):
            self.text = share_weights_copy(backbone.text)
            for index in _block_indices(config.blocks, self.text.num_layers, "text"):
                self.wrappers += attach_lora(self.text.attention_projections(index), *lora)
        # an adapted image tower changes its features while training: they cannot be cached
        self.uses_image_features = config.encoders == "text"
        self.text_adapted = config.encoders in ("both", "text")
        self.merged = False
        self._eval_cache = EvalCache()
        self._ids_key: tuple | None = None
        self._ids: torch.Tensor | None = None

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for wrapper in self.wrappers for p in wrapper.parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.lora_parameters()

    def set_merged(self, merged: bool) -> None:
        """Run every projection as (W + s·B·A) x instead of W x + s·B·A x (same function, one matmul)."""
        set_merged(self.wrappers, merged)
        self.merged = merged

    def train(self, mode: bool = True) -> CLIPLoRA:
        super().train(mode)
        self.visual.eval()  # the frozen towers keep eval behaviour; only the LoRA dropout follows ``mode``
        self.text.eval()
        for wrapper in self.wrappers:
            wrapper.train(mode)
        return self

    def _token_ids(self) -> torch.Tensor:
        """The task's hand-crafted template filled with each class name, tokenised once per label space."""
        device = self.text_device()
        key = (tuple(self.labels.classnames), self.labels.templates[0], device)
        if self._ids_key != key:
            template = self.labels.templates[0]
            self._ids = self.text.tokenize([template.format(name) for name in self.labels.classnames]).to(device)
            self._ids_key = key
        return self._ids

    def _encode_classes(self) -> torch.Tensor:
        ids, chunk = self._token_ids(), self.config.class_chunk
        parts = [
            encode_text_embeddings(self.text, self.text.embed_tokens(ids[i : i + chunk]), ids[i : i + chunk])
            for i in range(0, ids.shape[0], chunk)
        ]
        return nn.functional.normalize(torch.cat(parts).float(), dim=-1)

    def class_features(self) -> torch.Tensor:
        """Normalised class features [C, D] through the adapted text tower; cached between eval batches (and
        always, without gradients, when only the image tower is adapted)."""
        if self.text_adapted and (self.training or torch.is_grad_enabled()):
            return self._encode_classes()
        key = EvalCache.key_for(self.labels.classnames, self.lora_parameters(), self.merged, self.text_device())
        with torch.no_grad():
            return self._eval_cache.get(key, self._encode_classes)

    def forward(self, batch: dict) -> dict:
        if "features" in batch:
            image = self.normalized_image_features(batch)
        else:
            image = nn.functional.normalize(self.visual(batch["image"]).float(), dim=-1)
        class_features = self.class_features()
        logits = self.clip_logits(image.to(class_features.device), class_features)
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}
