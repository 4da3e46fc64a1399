"""ProGrad: CoOp whose gradient keeps only the part that does not fight the zero-shot prediction.

Both losses come from one forward on the same cached image features: the student logits (learned prompts)
and the zero-shot teacher logits (hand-crafted prompt) share v, so the image tower is never run twice.
The projection itself is applied by the single Trainer through the ``grad_transform`` hook.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vlprompt.config_utils import check_range
from vlprompt.losses import kl_to_teacher, prograd_project
from vlprompt.methods.base import register_method
from vlprompt.methods.coop import CoOp, CoOpConfig


@dataclass
class ProGradConfig(CoOpConfig):
    """``lam``: how much of the conflicting gradient component is removed (1 = ProGrad, 0 = plain CoOp);
    ``temperature``: softmax temperature of the KL to the zero-shot prediction (1 in the paper).

    The context starts as the official ProGrad code starts it: 16 slots, the words of the task's hand-crafted
    template before the class name right-aligned in the last slots, zeros before them.
    """

    n_ctx: int = 16
    ctx_init: str = "template"
    ctx_init_align: str = "right"
    lam: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("ProGradConfig", "lam", self.lam, 0.0)
        check_range("ProGradConfig", "temperature", self.temperature, 1e-6)


@register_method("prograd")
class ProGrad(CoOp):
    config_class = ProGradConfig

    def forward(self, batch: dict) -> dict:
        outputs = self.base_outputs(batch)
        result = {"loss": outputs["loss"], "logits": outputs["logits"]}
        if outputs["loss"] is not None and self.training and self.config.lam > 0:
            result["class_features"] = outputs["class_features"]
            hand = self.hand_features().to(outputs["image"].device)
            teacher = self.clip_logits(outputs["image"], hand)
            result["loss_kl"] = kl_to_teacher(outputs["logits"], teacher, self.config.temperature)
        return result

    def grad_transform(self, outputs: dict, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Per tensor: G_d = ∇L_ce, G_g = ∇L_kl; project G_d when they form an obtuse angle.

        Both losses reach the prompts only through the class features t, so the two gradients are
        J^T·∂L_ce/∂t and J^T·∂L_kl/∂t with the same Jacobian: one batched backward through the text encoder
        computes both (the frozen weights are read once for the pair instead of once per backward).
        """
        if "loss_kl" not in outputs:
            return list(torch.autograd.grad(outputs["loss"], params, allow_unused=True))
        features = outputs["class_features"]
        wrt_ce = torch.autograd.grad(outputs["loss"], features, retain_graph=True)[0]
        wrt_kl = torch.autograd.grad(outputs["loss_kl"], features, retain_graph=True)[0]
        pairs = torch.autograd.grad(
            features, params, grad_outputs=torch.stack([wrt_ce, wrt_kl]), is_grads_batched=True, allow_unused=True
        )
        projected = []
        for pair in pairs:
            projected.append(None if pair is None else prograd_project(pair[0], pair[1], self.config.lam))
        return projected
