"""ProGrad: CoOp whose gradient keeps only the part that does not fight the zero-shot prediction.

Both losses come from one forward on the same cached image features: the student logits (learned prompts)
and the zero-shot teacher logits (hand-crafted prompt) share v, so the image tower is never run twice.
The projection itself is applied by the single Trainer through the ``grad_parts`` / ``combine_grads`` hooks,
on the gradients of the whole optimizer step (all micro-batches of grad_accum, all ranks).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.data.base import LabelSpace
from vlprompt.losses import kl_to_teacher, prograd_project
from vlprompt.methods.base import register_method
from vlprompt.methods.clip import ClipMethod
from vlprompt.methods.coop import (
    COOP_RECIPE,
    CoOpConfig,
    context_class_dependent,
    context_outputs,
    context_prompt,
)
from vlprompt.prompts.text import INIT_ALIGNS


@dataclass
class ProGradConfig(CoOpConfig):
    """ProGrad: CoOp's options plus how the prompt-aligned gradient is taken.

    The context starts as the official ProGrad code starts it: 16 slots, the words of the task's hand-crafted
    template before the class name right-aligned in the last slots, zeros before them.
    """

    n_ctx: int = field(default=16, metadata={"help": "context slots (ProGrad's official start: 16)", "range": (1, 76)})
    ctx_init: str = field(
        default="template",
        metadata={"help": "'template': the task template's words before the class name (ProGrad's start)"},
    )
    ctx_init_align: str = field(
        default="right",
        metadata={"help": "'right': the init words fill the last slots after zeros (ProGrad's official start)",
                  "choices": INIT_ALIGNS},
    )

    lam: float = field(
        default=1.0,
        metadata={"help": (
            "how much of the conflicting gradient component is removed (1 = ProGrad, 0 = plain CoOp)"
        ), "range": (0.0, None)},
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "softmax temperature of the KL to the zero-shot prediction (1 in the paper)",
                  "range": (1e-6, None)},
    )


@register_method("prograd")
class ProGrad(ClipMethod):
    config_class = ProGradConfig
    train_defaults: ClassVar[dict[str, Any]] = COOP_RECIPE

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: ProGradConfig) -> None:
        super().__init__(backbone, labels, config)
        self.prompt = context_prompt(self.text, self.labels, config)

    def set_labels(self, labels: LabelSpace) -> None:
        super().set_labels(labels)
        self.prompt.set_classnames(self.text, self.labels.classnames)

    def class_dependent_parameter_names(self) -> set[str]:
        return context_class_dependent(self.config)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.prompt.ctx]

    def forward(self, batch: dict) -> dict:
        outputs = context_outputs(self, batch)
        result = {"loss": outputs["loss"], "logits": outputs["logits"]}
        if outputs["loss"] is not None and self.training and self.config.lam > 0:
            result["class_features"] = outputs["class_features"]
            hand = self.hand_features().to(outputs["image"].device)
            teacher = self.clip_logits(outputs["image"], hand)
            result["loss_kl"] = kl_to_teacher(outputs["logits"], teacher, self.config.temperature)
        return result

    def grad_parts(self, outputs: dict, params: list[torch.Tensor]) -> list[list[torch.Tensor | None]]:
        """[G_d, G_g] per tensor: ∇L_ce and ∇L_kl (just [G_d] without the KL term).

        Both losses reach the prompts only through the class features t, so the two gradients are
        J^T·∂L_ce/∂t and J^T·∂L_kl/∂t with the same Jacobian: the text encoder runs forward once, and two
        input-gradient backwards over the one retained graph give the pair (two vector-Jacobian products are the
        least an exact projection needs: it uses both directions). Two plain backwards, not one batched
        (``is_grads_batched``) backward: the same products, but the batched one runs the element-wise backward
        ops through vmap and took 1.1x the time of the pair on CPU (benchmarks/results/imagenet_scale_notes.md).
        The Trainer sums each part over micro-batches and ranks before ``combine_grads``, so the projection
        acts on the full batch's G_d and G_g, as in the official single-GPU code with that batch.
        """
        if "loss_kl" not in outputs:
            return [list(torch.autograd.grad(outputs["loss"], params, allow_unused=True))]
        features = outputs["class_features"]
        wrt_ce = torch.autograd.grad(outputs["loss"], features, retain_graph=True)[0]
        wrt_kl = torch.autograd.grad(outputs["loss_kl"], features, retain_graph=True)[0]
        g_d = torch.autograd.grad(features, params, grad_outputs=wrt_ce, retain_graph=True, allow_unused=True)
        g_g = torch.autograd.grad(features, params, grad_outputs=wrt_kl, allow_unused=True)
        return [list(g_d), list(g_g)]

    def combine_grads(self, parts: list[list[torch.Tensor | None]]) -> list[torch.Tensor | None]:
        """Per tensor: project G_d when it forms an obtuse angle with G_g."""
        if len(parts) == 1:
            return parts[0]
        return [d if d is None or g is None else prograd_project(d, g, self.config.lam) for d, g in zip(*parts)]

    def grad_transform(self, outputs: dict, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """The projected gradient of one batch on its own (no accumulation, one process)."""
        return self.combine_grads(self.grad_parts(outputs, params))
