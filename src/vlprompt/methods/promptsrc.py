"""PromptSRC: IVLP prompts regularised towards frozen CLIP, and Gaussian prompt aggregation (GPA) over epochs.

L = CE + λ_text·L1(t_c, t̄_c) + λ_image·L1(v, v_frozen) + λ_logits·KL(p_zs ‖ p)   (official: 25, 10, 1)
- t_c: normalised learned class features; t̄_c: the normalised mean of the frozen CLIP's (unnormalised) text
  features over the official 60 templates (assets/templates/promptsrc.json); ``F.l1_loss`` mean over all entries.
- v: normalised prompted image feature; v_frozen: the same image through the unprompted tower (a second, no-grad
  image forward per step, as in the official code).
- zero-shot logits s·v_frozen·t̄ᵀ; the KL is ``kl_div(log p, log p_zs, sum) / (B·C)`` at T = 1 — KL(p_zs ‖ p),
  the zero-shot distribution as the target.
- GPA: after epoch e (1-based) the prompts are added into a running sum with weight w_e ∝ N(e; mean, std²)
  normalised over the N epochs (official mean 15, std 1 for 20 epochs); after the last epoch the sum replaces the
  prompts. The official code averages its whole state dict; only the prompts change, so that is the same thing.
The regularisers are training-only, as in the official forward; evaluation is IVLP's (the same prompt modules
and ``deep_vl_outputs``, composed rather than inherited).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import option
from vlprompt.data.base import LabelSpace
from vlprompt.losses import feature_l1, gaussian_epoch_weights, logit_kl_per_entry
from vlprompt.methods.base import register_method
from vlprompt.methods.clip import ClipMethod
from vlprompt.methods.ivlp import IVLPConfig, deep_text_prompt, deep_vl_outputs, encode_prompted_images
from vlprompt.prompts.deep_vision import DeepVisionPrompts
from vlprompt.prompts.text import check_fits, encode_text_embeddings, token_count
from vlprompt.prompts.text_layout import split_template

log = logging.getLogger(__name__)

TEMPLATE_SETS = ("official", "task")


def official_templates() -> list[str]:
    """The 60 CLIP templates PromptSRC's teacher averages over (data, not code)."""
    path = resources.files("vlprompt").joinpath("assets", "templates", "promptsrc.json")
    return list(json.loads(path.read_text(encoding="utf-8"))["templates"])


@torch.no_grad()
def mean_template_features(text, classnames: list[str], templates: list[str], chunk: int) -> torch.Tensor:
    """Normalised mean over templates of the frozen text features, averaged before normalising: [C, D].

    The official teacher averages ``encode_text`` outputs (unnormalised) over templates and normalises after;
    CLIP's prompt ensemble (``ensemble_features``) normalises first. One template per pass keeps memory at C rows.
    """
    names = {name: token_count(text, name, "Class name") for name in classnames}
    for template in templates:
        head, tail = split_template(template)
        fixed = sum(token_count(text, part, "Template text") for part in (head, tail) if part)
        for name, length in names.items():
            check_fits(text, fixed + length + 2, name, f"template {template!r}")
    device = next(text.parameters()).device
    total = None
    for template in templates:
        for start in range(0, len(classnames), chunk):
            ids = text.tokenize([template.format(c) for c in classnames[start : start + chunk]]).to(device)
            part = encode_text_embeddings(text, text.embed_tokens(ids), ids).float()
            if total is None:
                total = torch.zeros(len(classnames), part.shape[-1], device=device)
            total[start : start + part.shape[0]] += part
    return nn.functional.normalize(total / len(templates), dim=-1)


@dataclass
class PromptSRCConfig(IVLPConfig):
    """PromptSRC's options (official names in brackets).

    ``text_loss_weight`` [TEXT_LOSS_WEIGHT] 25, ``image_loss_weight`` [IMAGE_LOSS_WEIGHT] 10, ``logit_loss_weight``
    1 (hard-coded officially), ``gpa_mean`` / ``gpa_std`` [GPA_MEAN / GPA_STD] 15 / 1 for the 20-epoch base-to-new
    recipe (6 / 10 cross-dataset); ``gpa`` false keeps the last epoch's prompts. ``templates``: "official" (the 60
    CLIP templates) or "task" (the task's own templates) for the frozen teacher text features.
    """

    n_ctx_text: int = option(4, help="learned text prompt tokens per prompted layer [N_CTX_TEXT]", range=(1, 76))
    n_ctx_vision: int = option(4, help="learned vision prompt tokens per prompted block [N_CTX_VISION]",
                               range=(0, None))
    text_loss_weight: float = option(
        25.0, help="weight of the L1 pull of the class features to the frozen teacher's [TEXT_LOSS_WEIGHT]",
        range=(0.0, None),
    )
    image_loss_weight: float = option(
        10.0, help="weight of the L1 pull of the image features to the frozen tower's [IMAGE_LOSS_WEIGHT]",
        range=(0.0, None),
    )
    logit_loss_weight: float = option(
        1.0, help="weight of KL(zero-shot || prompted) on the logits (hard-coded 1 officially)", range=(0.0, None)
    )
    gpa: bool = option(True, help="Gaussian prompt aggregation over epochs (false: keep the last epoch's prompts)")
    gpa_mean: float = option(15.0, help="mean epoch of the GPA weights (1-based) [GPA_MEAN]")
    gpa_std: float = option(1.0, help="standard deviation of the GPA weights, in epochs [GPA_STD]", range=(1e-6, None))
    templates: str = option(
        "official", choices=TEMPLATE_SETS,
        help="teacher text features: 'official' (the 60 CLIP templates) or 'task' (the task's own templates)",
    )


@register_method("promptsrc")
class PromptSRC(ClipMethod):
    """IVLP's prompt modules (composed, not inherited) plus the self-regularising losses and GPA."""

    config_class = PromptSRCConfig
    uses_image_features = False
    # configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml: SGD lr 0.0025, batch 4, 20 epochs, cosine,
    # one warm-up epoch from 1e-5, random resized crop + flip.
    train_defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd",
        "lr": 0.0025,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "batch_size": 4,
        "epochs": 20,
        "scheduler": "cosine",
        "warmup_epochs": 1,
        "warmup_start_factor": 1e-5 / 0.0025,
        "augment": "crop_flip",
    }

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: PromptSRCConfig) -> None:
        super().__init__(backbone, labels, config)
        self.text_prompt = deep_text_prompt(self.text, self.labels, config)
        self.vision_prompt = DeepVisionPrompts(self.visual, config.n_ctx_vision, config.depth_vision)
        self._teacher_key: tuple | None = None
        self._teacher: torch.Tensor | None = None
        self._gpa_sum: list[torch.Tensor] | None = None
        self._gpa_epochs: list[int] = []

    def set_labels(self, labels: LabelSpace) -> None:
        super().set_labels(labels)
        self.text_prompt.set_classnames(self.text, self.labels.classnames)

    def vision_prompts(self) -> list[torch.Tensor]:
        return self.vision_prompt.layer_prompts()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised prompted image features [B, D]."""
        return encode_prompted_images(self, self.vision_prompts(), images)

    def teacher_text_features(self) -> torch.Tensor:
        """t̄ [C, D]: derived state, recomputed when the label space changes, never saved."""
        templates = official_templates() if self.config.templates == "official" else list(self.labels.templates)
        key = (tuple(self.labels.classnames), tuple(templates), self.text_device())
        if self._teacher_key != key:
            self._teacher = mean_template_features(
                self.text, list(self.labels.classnames), templates, self.config.class_chunk
            )
            self._teacher_key = key
        return self._teacher

    def forward(self, batch: dict) -> dict:
        outputs = deep_vl_outputs(self, batch, self.vision_prompts())
        loss = outputs["loss"]
        result = {"logits": outputs["logits"]}
        if loss is not None and self.training:
            teacher = self.teacher_text_features().to(outputs["class_features"].device)
            with torch.no_grad():
                frozen = nn.functional.normalize(self.visual(batch["image"]).float(), dim=-1)
            zero_shot_logits = self.clip_logits(frozen, teacher)
            result["loss_ce"] = loss
            result["loss_text"] = feature_l1(outputs["class_features"], teacher)
            result["loss_image"] = feature_l1(outputs["image"], frozen)
            result["loss_logits"] = logit_kl_per_entry(outputs["logits"], zero_shot_logits)
            config = self.config
            loss = (
                loss
                + config.text_loss_weight * result["loss_text"]
                + config.image_loss_weight * result["loss_image"]
                + config.logit_loss_weight * result["loss_logits"]
            )
        result["loss"] = loss
        return result

    # ----- Gaussian prompt aggregation (trainer hook) -----
    def on_epoch_end(self, epoch: int, trainer: Any) -> None:
        if not self.config.gpa:
            return
        epochs = int(trainer.config.epochs)
        weights = gaussian_epoch_weights(epochs, self.config.gpa_mean, self.config.gpa_std)
        params = self.trainable_parameters()
        weight = float(weights[epoch])
        with torch.no_grad():
            if self._gpa_sum is None or epoch == 0:
                self._gpa_sum = [weight * p.detach().double() for p in params]
                self._gpa_epochs = []
            else:
                for total, p in zip(self._gpa_sum, params):
                    total.add_(p.detach().double(), alpha=weight)
            self._gpa_epochs.append(epoch)
            if epoch + 1 < epochs:
                return
            covered = float(weights[self._gpa_epochs].sum())
            if len(self._gpa_epochs) < epochs:
                log.warning(
                    "GPA saw epochs %s of %d (the run was resumed); averaging those with their weights renormalised",
                    [e + 1 for e in self._gpa_epochs], epochs,
                )
            for total, p in zip(self._gpa_sum, params):
                p.copy_((total / covered).to(p.dtype))
        self._gpa_sum, self._gpa_epochs = None, []
