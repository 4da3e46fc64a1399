"""IVLP: independent deep prompts in both CLIP towers (MaPLe paper's baseline; PromptSRC builds on it).

Text: deep text prompts (prompts/deep_text.py), layer-0 context from the first n tokens of "a photo of a".
Vision: VPT-deep style tokens at the input of the first J image blocks (prompts/deep_vision.py), N(0, 0.02),
layer 0's through ln_pre as in the official code. Loss: cross-entropy on s·cos. Both towers stay frozen; the
image tower holds prompts, so images are encoded every step (no feature cache) and class features are cached
only during evaluation.

``DeepVLMethod`` is the shared model; MaPLe (coupled vision prompts) and PromptSRC (IVLP + self-regularisation)
subclass it and add only what is new.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.config_utils import check_choice, check_range
from vlprompt.data.base import LabelSpace
from vlprompt.losses import CLASSIFICATION_LOSSES
from vlprompt.methods.base import register_method
from vlprompt.methods.zeroshot import ClipMethod
from vlprompt.prompts.deep_text import DeepTextPrompt
from vlprompt.prompts.deep_vision import DeepVisionPrompts, layered_vision_forward
from vlprompt.prompts.text import EvalCache

# The official b2n recipe of the multimodal-prompt-learning configs (IVLP and MaPLe): SGD lr 0.0035, batch 4,
# 5 epochs, cosine, one warm-up epoch at a constant 1e-5 (ours: a linear ramp from 1e-5, see README), Dassl's
# weight decay 5e-4, random resized crop + flip.
MULTIMODAL_RECIPE: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.0035,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "batch_size": 4,
    "epochs": 5,
    "scheduler": "cosine",
    "warmup_epochs": 1,
    "warmup_start_factor": 1e-5 / 0.0035,
    "augment": "crop_flip",
}


class DeepVLMethod(ClipMethod):
    """Deep text prompts + prompts inside the image tower; subclasses say where the vision prompts come from."""

    uses_image_features = False

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: Any) -> None:
        super().__init__(backbone, labels, config)
        self.text_prompt = DeepTextPrompt(
            self.text, labels.classnames, config.n_ctx_text, config.depth_text, config.ctx_init, config.class_chunk
        )
        self._eval_cache = EvalCache()

    @abstractmethod
    def vision_prompts(self) -> list[torch.Tensor]:
        """The prompts entering image blocks 0..J-1, each [n, d] (IVLP: its own parameters; MaPLe: coupled)."""

    def set_labels(self, labels: LabelSpace) -> None:
        super().set_labels(labels)
        self.text_prompt.set_classnames(self.text, labels.classnames)
        self._eval_cache.clear()

    def class_features(self) -> torch.Tensor:
        """Normalised learned class features [C, D]; during evaluation computed once, not per batch."""
        if self.training or torch.is_grad_enabled():
            return self.text_prompt(self.text)
        key = EvalCache.key_for(self.text_prompt.classnames, self.text_prompt.layer_prompts())
        return self._eval_cache.get(key, lambda: self.text_prompt(self.text))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised prompted image features [B, D]."""
        features = layered_vision_forward(self.visual, self.vision_prompts(), images)
        return nn.functional.normalize(features.float(), dim=-1)

    def base_outputs(self, batch: dict) -> dict:
        image = self.encode_images(batch["image"])
        class_features = self.class_features()
        logits = self.clip_logits(image, class_features.to(image.device))
        return {
            "loss": self.classification_loss(logits, batch, self.config.loss),
            "logits": logits,
            "image": image,
            "class_features": class_features,
        }

    def forward(self, batch: dict) -> dict:
        outputs = self.base_outputs(batch)
        return {"loss": outputs["loss"], "logits": outputs["logits"]}


@dataclass
class IVLPConfig:
    """IVLP's options (official names: N_CTX_TEXT, N_CTX_VISION, PROMPT_DEPTH_TEXT, PROMPT_DEPTH_VISION, CTX_INIT).

    ``depth_text`` J counts layer 0's context (1 = CoOp-style shallow context); ``depth_vision`` 0 switches the
    vision prompts off (the official "deep language prompting" variant). ``ctx_init``: words whose first
    ``n_ctx_text`` tokens start the layer-0 context (the rest stay as fixed words), "" for N(0, 0.02).
    ``class_chunk``: class prompts per text-encoder call (bounds memory for many classes).
    """

    n_ctx_text: int = 2
    n_ctx_vision: int = 2
    depth_text: int = 9
    depth_vision: int = 9
    ctx_init: str = "a photo of a"
    class_chunk: int = 256
    loss: str = field(
        default="ce",
        metadata={
            "help": "'ce' (the official loss) or 'sigmoid' (SigLIP's own objective, with the model's logit bias)",
            "choices": CLASSIFICATION_LOSSES,
        },
    )

    def __post_init__(self) -> None:
        where = type(self).__name__
        check_choice(where, "loss", self.loss, CLASSIFICATION_LOSSES)
        check_range(where, "n_ctx_text", self.n_ctx_text, 1, 76)
        check_range(where, "n_ctx_vision", self.n_ctx_vision, 0)
        check_range(where, "depth_text", self.depth_text, 1)
        check_range(where, "depth_vision", self.depth_vision, 0)
        check_range(where, "class_chunk", self.class_chunk, 1)


@register_method("ivlp")
class IVLP(DeepVLMethod):
    """Independent vision-language prompting: text and vision prompts are separate parameters."""

    config_class = IVLPConfig
    # MaPLe paper's IVLP row (n_ctx 2 per tower, depth 9) on the official multimodal recipe; the released
    # config file (configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml) uses depth 12: presets/ivlp-paper.yaml.
    train_defaults: ClassVar[dict[str, Any]] = dict(MULTIMODAL_RECIPE)

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: IVLPConfig) -> None:
        super().__init__(backbone, labels, config)
        self.vision_prompt = DeepVisionPrompts(self.visual, config.n_ctx_vision, config.depth_vision)

    def vision_prompts(self) -> list[torch.Tensor]:
        return self.vision_prompt.layer_prompts()
