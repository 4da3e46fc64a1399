"""Tip-Adapter and Tip-Adapter-F (Zhang et al., 2022): a key-value cache of the few-shot features beside zero-shot CLIP.

Definition, as in the official code (gaopengcuhk/Tip-Adapter, ``main.py`` / ``utils.py``):
- keys: each training image's feature averaged over K augmented views (official ``augment_epoch`` 10; the raw
  features are averaged, then normalised), values: the one-hot labels L;
- affinity A = exp(−β(1 − f·Kᵀ)) for the normalised test feature f, logits = s·f·Wᵀ + α·A·L with W the
  hand-crafted class features;
- α and β are chosen on the VALIDATION features by the official grid (β_i = 0.1 + i·(scale_β − 0.1)/steps_β for
  i < steps_β, same for α; first best kept, β outer, α inner); the test split is never read;
- Tip-Adapter-F fine-tunes the keys (AdamW lr 0.001, eps 1e-4, cosine, 20 epochs, batch 256) at the initial α, β,
  then searches α, β on validation. The official script keeps the epoch with the best TEST accuracy; we keep the
  last epoch (or the best validation epoch with ``select: best_val``).

Here the K views are the Trainer's feature cache (``feature_views``), shared by the keys and -F's training batches
(one random cached view per image per epoch, where the official code draws fresh augmentations); a checkpoint holds
the whole cache model (keys, one-hot values, α, β), since that is what was fitted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.config_utils import check_range
from vlprompt.data.base import LabelSpace, TaskData
from vlprompt.methods.base import register_method
from vlprompt.methods.zeroshot import ClipMethod

log = logging.getLogger(__name__)

CACHE_TENSORS = ("cache_keys", "cache_values", "alpha", "beta")


def tip_logits(clip_logits: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor, alpha, beta) -> torch.Tensor:
    """clip_logits + α·exp(−β(1 − affinity))·values, with affinity = f·Kᵀ [B, N] and one-hot values [N, C]."""
    return clip_logits + alpha * torch.exp(-beta * (1 - affinity)) @ values


def search_grid(scale: float, steps: int) -> list[float]:
    """The official search values: 0.1 + i·(scale − 0.1)/steps for i in 0..steps−1."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


@torch.no_grad()
def search_alpha_beta(clip_logits: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor,
                      labels: torch.Tensor, alphas: list[float], betas: list[float]) -> tuple[float, float, float]:
    """(α, β, accuracy) with the most correct predictions on the given (validation) split; ties keep the first
    in the official order (β outer, α inner)."""
    alpha_tensor = torch.tensor(alphas, dtype=clip_logits.dtype, device=clip_logits.device).view(-1, 1, 1)
    best = (-1, alphas[0], betas[0])
    for beta in betas:
        cache = torch.exp(-beta * (1 - affinity)) @ values
        correct = ((clip_logits + alpha_tensor * cache).argmax(-1) == labels).sum(-1)
        index = int(correct.argmax())  # first maximum: the lowest α of this β
        if int(correct[index]) > best[0]:
            best = (int(correct[index]), alphas[index], beta)
    return best[1], best[2], best[0] / max(labels.numel(), 1)


@dataclass
class TipAdapterConfig:
    """``init_alpha`` / ``init_beta``: used by -F's training and when no validation split exists;
    ``search``: choose α, β on validation; ``search_scale_*`` / ``search_steps_*``: the official grid (these
    defaults are its ImageNet config, which OxfordPets and UCF101 share; the preset lists every dataset's);
    ``ensemble``: class features from all templates (the official ImageNet setting) instead of templates[0];
    ``class_chunk``: class prompts per text-encoder call; ``logit_scale``: a fixed s in s·cos — the official code
    uses 100 for the zero-shot logits (the tip-adapter presets set it), None takes the checkpoint's exp(logit_scale)
    (100.03 on OpenAI weights)."""

    init_alpha: float = field(default=1.17, metadata={"help": "alpha for training (-F) and when no validation split exists"})
    init_beta: float = field(default=1.0, metadata={"help": "beta for training (-F) and when no validation split exists"})
    search: bool = field(default=True, metadata={"help": "search alpha and beta on the validation split"})
    search_scale_alpha: float = field(default=3.0, metadata={"help": "upper end of the alpha grid (official per-dataset scale)"})
    search_scale_beta: float = field(default=7.0, metadata={"help": "upper end of the beta grid (official per-dataset scale)"})
    search_steps_alpha: int = field(default=20, metadata={"help": "alpha grid size"})
    search_steps_beta: int = field(default=200, metadata={"help": "beta grid size"})
    ensemble: bool = field(default=False, metadata={"help": "class features from all templates instead of templates[0]"})
    class_chunk: int = field(default=256, metadata={"help": "class prompts per text-encoder call"})
    logit_scale: float | None = field(
        default=None,
        metadata={
            "help": "fixed logit scale s in s·cos (the official code: 100); unset: the checkpoint's exp(logit_scale)",
            "range": (0.0, None),
        },
    )

    def __post_init__(self) -> None:
        where = "TipAdapterConfig"
        for name in ("init_alpha", "init_beta", "search_scale_alpha", "search_scale_beta"):
            check_range(where, name, getattr(self, name), 0.0)
        check_range(where, "search_steps_alpha", self.search_steps_alpha, 1)
        check_range(where, "search_steps_beta", self.search_steps_beta, 1)
        check_range(where, "class_chunk", self.class_chunk, 1)
        if self.logit_scale is not None:
            check_range(where, "logit_scale", self.logit_scale, 0.0)


@register_method("tip-adapter")
class TipAdapter(ClipMethod):
    """Training-free: the cache is built from the cached training views, α and β are searched on validation."""

    config_class = TipAdapterConfig
    fine_tune_keys = False
    # K = 10 augmented views per image (official augment_epoch), RandomResizedCrop(0.5-1) + flip as officially.
    train_defaults: ClassVar[dict[str, Any]] = {"augment": "crop_flip", "feature_views": 10}

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: TipAdapterConfig) -> None:
        super().__init__(backbone, labels, config)
        if config.logit_scale is not None:  # the official code's fixed 100 (it moves the alpha / beta search)
            self.logit_scale = float(config.logit_scale)
        dim = backbone.text.feature_dim
        self.cache_keys = nn.Parameter(torch.zeros(0, dim), requires_grad=self.fine_tune_keys)
        self.cache_values = nn.Parameter(torch.zeros(0, labels.num_classes), requires_grad=False)
        self.alpha = nn.Parameter(torch.tensor(float(config.init_alpha)), requires_grad=False)
        self.beta = nn.Parameter(torch.tensor(float(config.init_beta)), requires_grad=False)

    # ----- the cache model -----
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.cache_keys] if self.fine_tune_keys else []

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().clone() for name in CACHE_TENSORS}

    def class_dependent_parameter_names(self) -> set[str]:
        return set(CACHE_TENSORS)

    def resize_for_checkpoint(self, shapes: dict[str, tuple]) -> None:
        """The cache is as large as the training set it was built from: take the checkpoint's size."""
        for name in ("cache_keys", "cache_values"):
            if name in shapes:
                parameter = getattr(self, name)
                parameter.data = parameter.data.new_zeros(shapes[name])

    def set_cache(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Keys [N, D] (normalised here) and integer labels [N] -> the cache; α, β back to their initial values."""
        device = self.cache_keys.device
        self.cache_keys.data = nn.functional.normalize(keys.float(), dim=-1).to(device)
        self.cache_values.data = nn.functional.one_hot(labels, self.labels.num_classes).float().to(device)
        self.alpha.data.fill_(self.config.init_alpha)
        self.beta.data.fill_(self.config.init_beta)

    def prepare(self, task: TaskData, trainer: Any) -> None:
        """Keys: the mean of each training image's cached views (raw features), then normalised."""
        features = trainer.cached_features(task.train, train=True)
        keys = features.mean(dim=0) if features.dim() == 3 else features
        self.set_cache(keys, torch.tensor(task.train.labels, dtype=torch.long))

    def on_fit_end(self, task: TaskData, trainer: Any) -> None:
        """α, β from the official grid on the validation features; the test split is never read."""
        if not self.config.search:
            return
        if task.val is None:
            log.warning("%s: the task has no validation split; keeping α=%.3g, β=%.3g (no search on test).",
                        self.method_name, self.config.init_alpha, self.config.init_beta)
            return
        features = trainer.cached_features(task.val).to(self.cache_keys.device)
        labels = torch.tensor(task.val.labels, dtype=torch.long, device=features.device)
        with torch.no_grad():
            clip_logits, affinity = self.logit_parts(features)
        config = self.config
        alpha, beta, accuracy = search_alpha_beta(
            clip_logits, affinity, self.cache_values, labels,
            search_grid(config.search_scale_alpha, config.search_steps_alpha),
            search_grid(config.search_scale_beta, config.search_steps_beta),
        )
        self.alpha.data.fill_(alpha)
        self.beta.data.fill_(beta)
        trainer.log_metrics({"tip_alpha": alpha, "tip_beta": beta, "val_accuracy": accuracy})

    # ----- forward -----
    def logit_parts(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(zero-shot logits s·f·Wᵀ, affinity f·Kᵀ) for raw image features [B, D]."""
        image = nn.functional.normalize(features.float(), dim=-1)
        class_features = self.hand_features(self.config.ensemble).to(image.device)
        return self.clip_logits(image, class_features), image @ self.cache_keys.t()

    def forward(self, batch: dict) -> dict:
        features = batch.get("features")
        if features is None:
            with torch.no_grad():
                features = self.image_features(batch["image"])
        clip_logits, affinity = self.logit_parts(features)
        logits = tip_logits(clip_logits, affinity, self.cache_values, self.alpha, self.beta)
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}


@register_method("tip-adapter-f")
class TipAdapterF(TipAdapter):
    """The cache keys train (initialised from the few-shot features, not renormalised while training)."""

    fine_tune_keys = True
    # AdamW(lr 0.001, eps 1e-4; PyTorch's default weight decay 0.01), cosine without warm-up, 20 epochs, batch 256.
    train_defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "adamw", "lr": 1e-3, "adam_eps": 1e-4, "weight_decay": 0.01, "epochs": 20, "batch_size": 256,
        "warmup_epochs": 0, "augment": "crop_flip", "feature_views": 10,
    }
