"""IVLP: independent deep prompts in both CLIP towers (MaPLe paper's baseline; PromptSRC builds on it).

Text: deep text prompts (prompts/deep_text.py), layer-0 context from the first n tokens of "a photo of a".
Vision: VPT-deep style tokens at the input of the first J image blocks (prompts/deep_vision.py), N(0, 0.02),
layer 0's through ln_pre as in the official code. Loss: cross-entropy on s·cos. Both towers stay frozen; the
image tower holds prompts, so images are encoded every step (no feature cache) and class features are cached
only during evaluation.

MaPLe (coupled vision prompts) and PromptSRC (IVLP + self-regularisation) compose the same prompt modules and
share ``deep_vl_outputs`` instead of subclassing IVLP; each adds only what is new.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import ValidatedConfig, option
from vlprompt.data.base import LabelSpace
from vlprompt.losses import CLASSIFICATION_LOSSES
from vlprompt.methods.base import register_method
from vlprompt.methods.clip import ClipMethod, text_memory_option
from vlprompt.prompts.deep_text import DeepTextPrompt
from vlprompt.prompts.deep_vision import DeepVisionPrompts, layered_vision_forward

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


def deep_text_prompt(text, labels: LabelSpace, config: Any) -> DeepTextPrompt:
    """The deep text prompts of a config with IVLP's per-tower names (IVLP, PromptSRC; MaPLe maps its own)."""
    return DeepTextPrompt(text, labels.classnames, config.n_ctx_text, config.depth_text, config.ctx_init,
                          config.class_chunk, config.text_memory_mb)


def encode_prompted_images(method: ClipMethod, vision_prompts: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Normalised image features [B, D] with ``vision_prompts`` entering image blocks 0..J-1."""
    features = layered_vision_forward(method.visual, vision_prompts, images)
    return nn.functional.normalize(features.float(), dim=-1)


def deep_vl_outputs(method: ClipMethod, batch: dict, vision_prompts: list[torch.Tensor]) -> dict:
    """The shared prediction of IVLP, MaPLe and PromptSRC for a method holding a DeepTextPrompt at
    ``method.text_prompt``: logits and cross-entropy, with the image and class features PromptSRC's
    regularisers need."""
    image = encode_prompted_images(method, vision_prompts, batch["image"])
    class_features = method.text_prompt.class_features(method.text)
    logits = method.clip_logits(image, class_features.to(image.device))
    return {
        "loss": method.classification_loss(logits, batch, method.config.loss),
        "logits": logits,
        "image": image,
        "class_features": class_features,
    }


@dataclass
class IVLPConfig(ValidatedConfig):
    """IVLP's options (official names: N_CTX_TEXT, N_CTX_VISION, PROMPT_DEPTH_TEXT, PROMPT_DEPTH_VISION, CTX_INIT).

    ``depth_text`` J counts layer 0's context (1 = CoOp-style shallow context); ``depth_vision`` 0 switches the
    vision prompts off (the official "deep language prompting" variant). ``ctx_init``: words whose first
    ``n_ctx_text`` tokens start the layer-0 context (the rest stay as fixed words), "" for N(0, 0.02).
    ``class_chunk``: class prompts per text-encoder call (bounds memory for many classes).
    """

    n_ctx_text: int = option(2, help="learned text prompt tokens per prompted layer [N_CTX_TEXT]", range=(1, 76))
    n_ctx_vision: int = option(2, help="learned vision prompt tokens per prompted block [N_CTX_VISION]",
                               range=(0, None))
    depth_text: int = option(
        9, help="text layers J with prompts, counting layer 0's context (1: CoOp-style shallow) [PROMPT_DEPTH_TEXT]",
        range=(1, None),
    )
    depth_vision: int = option(
        9, help="image blocks with prompts (0: no vision prompts, deep language prompting) [PROMPT_DEPTH_VISION]",
        range=(0, None),
    )
    ctx_init: str = option(
        "a photo of a",
        help="words whose first n_ctx_text tokens start layer 0's context (the rest stay fixed); '' for N(0, 0.02)",
    )
    class_chunk: int = option(256, help="class prompts per text-encoder call without gradients",
                              range=(1, None))
    text_memory_mb: float = text_memory_option()
    loss: str = option(
        "ce", help="'ce' (the official loss) or 'sigmoid' (SigLIP's own objective, with the model's logit bias)",
        choices=CLASSIFICATION_LOSSES,
    )


@register_method("ivlp")
class IVLP(ClipMethod):
    """Independent vision-language prompting: text and vision prompts are separate parameters."""

    config_class = IVLPConfig
    uses_image_features = False
    # MaPLe paper's IVLP row (n_ctx 2 per tower, depth 9) on the official multimodal recipe; the released
    # config file (configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml) uses depth 12: presets/ivlp-paper.yaml.
    train_defaults: ClassVar[dict[str, Any]] = dict(MULTIMODAL_RECIPE)

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: IVLPConfig) -> None:
        super().__init__(backbone, labels, config)
        self.text_prompt = deep_text_prompt(self.text, self.labels, config)
        self.vision_prompt = DeepVisionPrompts(self.visual, config.n_ctx_vision, config.depth_vision)

    def set_labels(self, labels: LabelSpace) -> None:
        super().set_labels(labels)
        self.text_prompt.set_classnames(self.text, self.labels.classnames)

    def vision_prompts(self) -> list[torch.Tensor]:
        return self.vision_prompt.layer_prompts()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised prompted image features [B, D]."""
        return encode_prompted_images(self, self.vision_prompts(), images)

    def forward(self, batch: dict) -> dict:
        outputs = deep_vl_outputs(self, batch, self.vision_prompts())
        return {"loss": outputs["loss"], "logits": outputs["logits"]}
