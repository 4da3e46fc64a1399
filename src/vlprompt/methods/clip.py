"""ClipMethod: the base every CLIP method shares (frozen towers, logit scale, hand-crafted class features).

The hand-crafted features are zero-shot CLIP's classifier, the teacher of ProGrad and the anchor of KgCoOp, so
they are computed here once per label space. Methods below it compose prompt modules (prompts/*.py) rather
than subclassing one another (at most two levels below PromptMethod).
"""
from __future__ import annotations

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import option
from vlprompt.data.base import LabelSpace
from vlprompt.losses import sigmoid_loss
from vlprompt.methods.base import PromptMethod
from vlprompt.prompts.text import ensemble_features, hand_crafted_features
from vlprompt.prompts.text_plan import DEFAULT_TEXT_MEMORY_MB


def text_memory_option() -> float:
    """THE ``text_memory_mb`` field of every method that encodes class prompts with learned context (CoOp, KgCoOp,
    ProGrad, CoCoOp, MoCoOp, IVLP, MaPLe, PromptSRC): declared here once, so its help, default and range are one."""
    return option(
        DEFAULT_TEXT_MEMORY_MB,
        help="activation memory (MB) a training step may keep for the class prompts; the text calls are planned "
        "from it (nothing is recomputed when the step fits, beyond it calls are recomputed in backward)",
        range=(1e-3, None),
    )


class ClipMethod(PromptMethod):
    """A CLIP method (text tower required). By default its image tower stays frozen and it consumes cached image
    features (batch["features"]); methods that prompt the image tower (IVLP, MaPLe, PromptSRC) turn that off.

    Hand-crafted class features (one template, or the ensemble) are derived state: computed on first use,
    recomputed when the label space changes, never saved in a checkpoint.
    """

    needs_text_tower = True
    uses_image_features = True

    def __init__(self, backbone: Backbone, labels: LabelSpace, config) -> None:
        super().__init__(backbone, labels, config)
        self.logit_scale = float(backbone.logit_scale)
        self.logit_bias = float(backbone.logit_bias)
        self._hand_key: tuple | None = None
        self._hand: torch.Tensor | None = None
        self._all_templates_key: tuple | None = None
        self._all_templates: torch.Tensor | None = None

    def normalized_image_features(self, batch: dict) -> torch.Tensor:
        features = batch.get("features")
        if features is None:
            with torch.no_grad():
                features = self.image_features(batch["image"])
        return nn.functional.normalize(features.float(), dim=-1)

    def text_device(self) -> torch.device:
        return next(self.text.parameters()).device

    def hand_features(self, ensemble: bool = False) -> torch.Tensor:
        """Normalised hand-crafted class features [C, D]: templates[0], or the mean over all templates."""
        templates = tuple(self.labels.templates if ensemble else self.labels.templates[:1])
        key = (tuple(self.labels.classnames), templates, self.text_device())
        if self._hand_key != key:
            chunk = getattr(self.config, "class_chunk", 256)
            per_template = hand_crafted_features(self.text, self.labels.classnames, templates, chunk)
            self._hand = ensemble_features(per_template)
            self._hand_key = key
        return self._hand

    def template_features(self) -> torch.Tensor:
        """Hand-crafted features of every template [T, C, D] (the LASP-style text-to-text loss classifies the
        learned class features among them); derived state like ``hand_features``."""
        key = (tuple(self.labels.classnames), tuple(self.labels.templates), self.text_device())
        if self._all_templates_key != key:
            chunk = getattr(self.config, "class_chunk", 256)
            self._all_templates = hand_crafted_features(self.text, self.labels.classnames, self.labels.templates, chunk)
            self._all_templates_key = key
        return self._all_templates

    def clip_logits(self, image_features: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
        """s·cos + b for normalised features: [B, D] x [C, D] -> [B, C], or per-image classes [B, C, D].

        b is the model's logit bias (SigLIP; 0 for CLIP): softmax-based losses and teachers are invariant to it,
        the sigmoid loss and per-class sigmoid probabilities are not.
        """
        if class_features.dim() == 3:
            cos = torch.einsum("bd,bcd->bc", image_features, class_features)
        else:
            cos = image_features @ class_features.t()
        return self.logit_scale * cos + self.logit_bias

    def classification_loss(self, logits: torch.Tensor, batch: dict, kind: str = "ce") -> torch.Tensor | None:
        """Cross-entropy (CLIP's objective, the methods' official loss) or ``"sigmoid"`` (SigLIP's own)."""
        label = batch.get("label")
        if label is None:
            return None
        return sigmoid_loss(logits, label) if kind == "sigmoid" else self.cross_entropy(logits, batch)

    def zero_shot_outputs(self, batch: dict, ensemble: bool) -> dict:
        """Zero-shot CLIP's prediction with the hand-crafted classifier (one template, or the ensemble)."""
        image = self.normalized_image_features(batch)
        logits = self.clip_logits(image, self.hand_features(ensemble).to(image.device))
        return {"loss": self.cross_entropy(logits, batch), "logits": logits}
