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

Both variants compose one ``CacheModel`` (siblings below ClipMethod, not a subclass chain). Here the K views are the Trainer's feature cache (``feature_views``), shared by the keys and -F's training batches
(one random cached view per image per epoch, where the official code draws fresh augmentations); a checkpoint holds
the whole cache model (keys, one-hot values, α, β), since that is what was fitted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import ValidatedConfig, option
from vlprompt.data.base import LabelSpace, TaskData
from vlprompt.methods.base import register_method
from vlprompt.methods.clip import ClipMethod

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
class TipAdapterConfig(ValidatedConfig):
    """``init_alpha`` / ``init_beta``: used by -F's training and when no validation split exists;
    ``search``: choose α, β on validation; ``search_scale_*`` / ``search_steps_*``: the official grid (these
    defaults are its ImageNet config, which OxfordPets and UCF101 share; the preset lists every dataset's);
    ``ensemble``: class features from all templates (the official ImageNet setting) instead of templates[0];
    ``class_chunk``: class prompts per text-encoder call; ``logit_scale``: a fixed s in s·cos — the official code
    uses 100 for the zero-shot logits (the tip-adapter presets set it), None takes the checkpoint's exp(logit_scale)
    (100.03 on OpenAI weights)."""

    init_alpha: float = option(1.17, help="alpha for training (-F) and when no validation split exists",
                               range=(0.0, None))
    init_beta: float = option(1.0, help="beta for training (-F) and when no validation split exists", range=(0.0, None))
    search: bool = option(True, help="search alpha and beta on the validation split")
    search_scale_alpha: float = option(3.0, help="upper end of the alpha grid (official per-dataset scale)",
                                       range=(0.0, None))
    search_scale_beta: float = option(7.0, help="upper end of the beta grid (official per-dataset scale)",
                                      range=(0.0, None))
    search_steps_alpha: int = option(20, help="alpha grid size", range=(1, None))
    search_steps_beta: int = option(200, help="beta grid size", range=(1, None))
    ensemble: bool = option(False, help="class features from all templates instead of templates[0]")
    class_chunk: int = option(256, help="class prompts per text-encoder call", range=(1, None))
    logit_scale: float | None = option(
        None,
        help="fixed logit scale s in s·cos (the official code: 100); unset: the checkpoint's exp(logit_scale)",
        range=(0.0, None),
    )


class CacheModel:
    """The key-value cache model both Tip-Adapter variants compose: its tensors live on the method (they are what
    a checkpoint holds, under the names of ``CACHE_TENSORS``) and this object holds the logic, so Tip-Adapter and
    Tip-Adapter-F stay siblings one level below ClipMethod instead of one subclassing the other."""

    def __init__(self, method: ClipMethod, fine_tune_keys: bool) -> None:
        config = method.config
        if config.logit_scale is not None:  # the official code's fixed 100 (it moves the alpha / beta search)
            method.logit_scale = float(config.logit_scale)
        dim = method.backbone.text.feature_dim
        method.cache_keys = nn.Parameter(torch.zeros(0, dim), requires_grad=fine_tune_keys)
        method.cache_values = nn.Parameter(torch.zeros(0, method.labels.num_classes), requires_grad=False)
        method.alpha = nn.Parameter(torch.tensor(float(config.init_alpha)), requires_grad=False)
        method.beta = nn.Parameter(torch.tensor(float(config.init_beta)), requires_grad=False)
        self.fine_tune_keys = fine_tune_keys

    def trainable_parameters(self, method: ClipMethod) -> list[nn.Parameter]:
        return [method.cache_keys] if self.fine_tune_keys else []

    @staticmethod
    def state_dict(method: ClipMethod) -> dict[str, torch.Tensor]:
        return {name: getattr(method, name).detach().clone() for name in CACHE_TENSORS}

    @staticmethod
    def resize(method: ClipMethod, shapes: dict[str, tuple]) -> None:
        """The cache is as large as the training set it was built from: take the checkpoint's size."""
        for name in ("cache_keys", "cache_values"):
            if name in shapes:
                parameter = getattr(method, name)
                parameter.data = parameter.data.new_zeros(shapes[name])

    @staticmethod
    def set_cache(method: ClipMethod, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Keys [N, D] (normalised here) and integer labels [N] -> the cache; α, β back to their initial values."""
        device = method.cache_keys.device
        method.cache_keys.data = nn.functional.normalize(keys.float(), dim=-1).to(device)
        method.cache_values.data = nn.functional.one_hot(labels, method.labels.num_classes).float().to(device)
        method.alpha.data.fill_(method.config.init_alpha)
        method.beta.data.fill_(method.config.init_beta)

    @staticmethod
    def prepare(method: ClipMethod, task: TaskData, trainer: Any) -> None:
        """Keys: the mean of each training image's cached views (raw features), then normalised."""
        features = trainer.cached_features(task.train, train=True)
        keys = features.mean(dim=0) if features.dim() == 3 else features
        CacheModel.set_cache(method, keys, torch.tensor(task.train.labels, dtype=torch.long))

    @staticmethod
    def search(method: ClipMethod, task: TaskData, trainer: Any) -> None:
        """α, β from the official grid on the validation features; the test split is never read."""
        config = method.config
        if not config.search:
            return
        if task.val is None:
            log.warning("%s: the task has no validation split; keeping α=%.3g, β=%.3g (no search on test).",
                        method.method_name, config.init_alpha, config.init_beta)
            return
        features = trainer.cached_features(task.val).to(method.cache_keys.device)
        labels = torch.tensor(task.val.labels, dtype=torch.long, device=features.device)
        with torch.no_grad():
            clip_logits, affinity = CacheModel.logit_parts(method, features)
        alpha, beta, accuracy = search_alpha_beta(
            clip_logits, affinity, method.cache_values, labels,
            search_grid(config.search_scale_alpha, config.search_steps_alpha),
            search_grid(config.search_scale_beta, config.search_steps_beta),
        )
        method.alpha.data.fill_(alpha)
        method.beta.data.fill_(beta)
        trainer.log_metrics({"tip_alpha": alpha, "tip_beta": beta, "val_accuracy": accuracy})

    @staticmethod
    def logit_parts(method: ClipMethod, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(zero-shot logits s·f·Wᵀ, affinity f·Kᵀ) for raw image features [B, D]."""
        image = nn.functional.normalize(features.float(), dim=-1)
        class_features = method.hand_features(method.config.ensemble).to(image.device)
        return method.clip_logits(image, class_features), image @ method.cache_keys.t()

    @staticmethod
    def outputs(method: ClipMethod, batch: dict) -> dict:
        features = batch.get("features")
        if features is None:
            with torch.no_grad():
                features = method.image_features(batch["image"])
        clip_logits, affinity = CacheModel.logit_parts(method, features)
        logits = tip_logits(clip_logits, affinity, method.cache_values, method.alpha, method.beta)
        return {"loss": method.cross_entropy(logits, batch), "logits": logits}


def _cache_method(name: str, fine_tune_keys: bool, doc: str, defaults: dict[str, Any]) -> type[ClipMethod]:
    """One Tip-Adapter variant: a ClipMethod that composes a CacheModel and forwards every hook to it."""

    class Method(ClipMethod):
        config_class = TipAdapterConfig
        train_defaults: ClassVar[dict[str, Any]] = defaults

        def __init__(self, backbone: Backbone, labels: LabelSpace, config: TipAdapterConfig) -> None:
            super().__init__(backbone, labels, config)
            self.cache = CacheModel(self, fine_tune_keys)

        def trainable_parameters(self) -> list[nn.Parameter]:
            return self.cache.trainable_parameters(self)

        def trainable_state_dict(self) -> dict[str, torch.Tensor]:
            return CacheModel.state_dict(self)

        def class_dependent_parameter_names(self) -> set[str]:
            return set(CACHE_TENSORS)

        def resize_for_checkpoint(self, shapes: dict[str, tuple]) -> None:
            CacheModel.resize(self, shapes)

        def set_cache(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
            CacheModel.set_cache(self, keys, labels)

        def prepare(self, task: TaskData, trainer: Any) -> None:
            CacheModel.prepare(self, task, trainer)

        def on_fit_end(self, task: TaskData, trainer: Any) -> None:
            CacheModel.search(self, task, trainer)

        def logit_parts(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return CacheModel.logit_parts(self, features)

        def forward(self, batch: dict) -> dict:
            return CacheModel.outputs(self, batch)

    Method.__name__ = Method.__qualname__ = name
    Method.__doc__ = doc
    return Method


TipAdapter = register_method("tip-adapter")(_cache_method(
    "TipAdapter", fine_tune_keys=False,
    doc="Training-free: the cache is built from the cached training views, α and β are searched on validation.",
    # K = 10 augmented views per image (official augment_epoch), RandomResizedCrop(0.5-1) + flip as officially.
    defaults={"augment": "crop_flip", "feature_views": 10},
))

TipAdapterF = register_method("tip-adapter-f")(_cache_method(
    "TipAdapterF", fine_tune_keys=True,
    doc="The cache keys train (initialised from the few-shot features, not renormalised while training).",
    # AdamW(lr 0.001, eps 1e-4; PyTorch's default weight decay 0.01), cosine without warm-up, 20 epochs, batch 256.
    defaults={
        "optimizer": "adamw", "lr": 1e-3, "adam_eps": 1e-4, "weight_decay": 0.01, "epochs": 20, "batch_size": 256,
        "warmup_epochs": 0, "augment": "crop_flip", "feature_views": 10,
    },
))
