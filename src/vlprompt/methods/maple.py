"""MaPLe: multi-modal prompt learning; the vision prompts of each of the first J layers are coupled to the text.

Text prompts are the learned ones (deep text prompts, n tokens per layer for layers 0..J-1); the vision prompts of
layer i are ``coupling_i(text prompt_i)`` with a per-layer Linear(d_txt -> d_vis). As in the official code, layer
0's coupling is its own Linear and the couplings of layers 1..J-1 start as copies of one Linear (PyTorch's default
init); the vision prompts enter the image tower like IVLP's (layer 0 through ln_pre). A depth beyond the text
tower's layers prompts all of them (J = min(depth, text layers)); the image tower must have at least J blocks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.config import ValidatedConfig, option
from vlprompt.core.errors import ConfigError
from vlprompt.data.base import LabelSpace
from vlprompt.losses import CLASSIFICATION_LOSSES
from vlprompt.methods.base import register_method
from vlprompt.methods.clip import ClipMethod, text_memory_option
from vlprompt.methods.ivlp import MULTIMODAL_RECIPE, deep_text_prompt, deep_vl_outputs, encode_prompted_images
from vlprompt.prompts.deep_text import clamp_depth


@dataclass
class MaPLeConfig(ValidatedConfig):
    """MaPLe's options (official: N_CTX, PROMPT_DEPTH, CTX_INIT): ``n_ctx`` tokens per layer in both towers,
    ``depth`` J prompted layers in both (9 base-to-new, 3 cross-dataset / domain generalisation).
    ``class_chunk``: class prompts per text-encoder call (bounds memory for many classes)."""

    n_ctx: int = option(2, help="prompt tokens per prompted layer, in both towers [N_CTX]", range=(1, 76))
    depth: int = option(
        9, help="prompted layers J in both towers (9 base-to-new, 3 cross-dataset) [PROMPT_DEPTH]", range=(1, None)
    )
    ctx_init: str = option(
        "a photo of a", help="words whose first n_ctx tokens start layer 0's text context; '' for N(0, 0.02)"
    )
    class_chunk: int = option(256, help="class prompts per text-encoder call without gradients",
                              range=(1, None))
    text_memory_mb: float = text_memory_option()
    loss: str = option(
        "ce", help="'ce' (the official loss) or 'sigmoid' (SigLIP's own objective, with the model's logit bias)",
        choices=CLASSIFICATION_LOSSES,
    )

    # deep_text_prompt reads IVLP's per-tower names
    @property
    def n_ctx_text(self) -> int:
        return self.n_ctx

    @property
    def depth_text(self) -> int:
        return self.depth


@register_method("maple")
class MaPLe(ClipMethod):
    config_class = MaPLeConfig
    uses_image_features = False
    train_defaults: ClassVar[dict[str, Any]] = dict(MULTIMODAL_RECIPE)

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: MaPLeConfig) -> None:
        super().__init__(backbone, labels, config)
        self.text_prompt = deep_text_prompt(self.text, self.labels, config)
        depth = clamp_depth(self.text_prompt.depth, self.visual.num_blocks, "vision")
        if depth < self.text_prompt.depth:
            raise ConfigError(
                f"MaPLe couples every prompted text layer to an image block: depth {self.text_prompt.depth} needs "
                f"that many image blocks, this image tower has {self.visual.num_blocks}. Lower depth."
            )
        text_width, vision_width = self.text.width, self.visual.width
        device = self.text_prompt.context.ctx.device
        first = nn.Linear(text_width, vision_width, device=device)
        deeper = nn.Linear(text_width, vision_width, device=device)
        self.coupling = nn.ModuleList([first] + [copy.deepcopy(deeper) for _ in range(depth - 1)])

    def set_labels(self, labels: LabelSpace) -> None:
        super().set_labels(labels)
        self.text_prompt.set_classnames(self.text, self.labels.classnames)

    def vision_prompts(self) -> list[torch.Tensor]:
        text_prompts = self.text_prompt.layer_prompts()
        return [layer(prompt) for layer, prompt in zip(self.coupling, text_prompts)]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised prompted image features [B, D]."""
        return encode_prompted_images(self, self.vision_prompts(), images)

    def forward(self, batch: dict) -> dict:
        outputs = deep_vl_outputs(self, batch, self.vision_prompts())
        return {"loss": outputs["loss"], "logits": outputs["logits"]}
