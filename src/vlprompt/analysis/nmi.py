"""The NMI diagnostic of the SPT paper: how strongly prompt tokens and patch tokens depend on each other.

For one image and one block, the joint distribution of prompt tokens P (N_p x d) and patch tokens E (N_e x d)
is approximated by sigmoid cross-attention, pi_kj proportional to sigmoid(p_k . e_j / sqrt(d)), normalised to
sum 1. With marginals pi(p_k) = sum_j pi_kj and pi(e_j) = sum_k pi_kj, NMI = I(P; E) / norm, where norm is
min(H_P, H_E) (Estevez et al. 2009, the default), sqrt(H_P * H_E) or (H_P + H_E) / 2.
The tokens used for block i are the ones entering block i (for deep prompts: that block's own prompts).

During training the diagnostic is a trainer callback (``NMICallback``); a run config builds it from its
``nmi`` options or from the ``method_options.nmi_*`` keys VPT/SPT runs and sweeps have always used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vlprompt.backbones.base import VisionTower
from vlprompt.core.config import ValidatedConfig, check_choice, check_range, option
from vlprompt.core.errors import ConfigError
from vlprompt.data.transforms import eval_transform
from vlprompt.prompts.visual import VisualPrompts, prompted_tokens
from vlprompt.train.callbacks import Callback

if TYPE_CHECKING:
    from vlprompt.data.base import TaskData
    from vlprompt.train.trainer import Trainer

NORMALIZATIONS = ("min", "sqrt", "mean")


def normalized_mutual_information(
    prompt_tokens: torch.Tensor, patch_tokens: torch.Tensor, normalization: str = "min"
) -> torch.Tensor:
    """NMI of [..., N_p, d] prompts and [..., N_e, d] patches; one value per leading index (float64)."""
    check_choice("nmi", "normalization", normalization, NORMALIZATIONS)
    prompts = prompt_tokens.detach().double()
    patches = patch_tokens.detach().double()
    scores = torch.sigmoid(prompts @ patches.transpose(-1, -2) / prompts.shape[-1] ** 0.5)
    joint = scores / scores.sum(dim=(-2, -1), keepdim=True)
    p_prompt = joint.sum(dim=-1)
    p_patch = joint.sum(dim=-2)
    independent = p_prompt.unsqueeze(-1) * p_patch.unsqueeze(-2)
    mutual = (joint * (joint.log() - independent.log())).sum(dim=(-2, -1))
    h_prompt = -(p_prompt * p_prompt.log()).sum(dim=-1)
    h_patch = -(p_patch * p_patch.log()).sum(dim=-1)
    if normalization == "min":
        norm = torch.minimum(h_prompt, h_patch)
    elif normalization == "sqrt":
        norm = (h_prompt * h_patch).sqrt()
    else:
        norm = (h_prompt + h_patch) / 2
    # One prompt (or one patch) has zero entropy and zero information: report 0 rather than rounding noise
    # divided by rounding noise.
    degenerate = norm < 1e-12
    return torch.where(degenerate, torch.zeros_like(mutual), mutual / norm.clamp_min(1e-12))


@torch.no_grad()
def block_nmi(
    visual: VisionTower, prompts: VisualPrompts, images: torch.Tensor, normalization: str = "min"
) -> list[float]:
    """Mean NMI over the images, for every block, with the prompts in eval mode (no prompt dropout)."""
    num_prefix = visual.num_prefix_tokens
    num_prompts = prompts.num_tokens
    values: list[float] = []

    def record(index: int, tokens: torch.Tensor) -> None:
        prompt_part = tokens[:, num_prefix : num_prefix + num_prompts]
        patch_part = tokens[:, num_prefix + num_prompts :]
        values.append(float(normalized_mutual_information(prompt_part, patch_part, normalization).mean()))

    was_training = prompts.training
    prompts.eval()
    try:
        prompted_tokens(visual, prompts, images, on_block_input=record)
    finally:
        prompts.train(was_training)
    return values


def method_nmi(method, images: torch.Tensor, normalization: str = "min") -> list[float]:
    """Per-block NMI of a visual-prompt method (anything with ``visual`` and ``prompts``) on a batch of images."""
    device = method.prompts.raw(0).device
    return block_nmi(method.visual, method.prompts, images.to(device), normalization)


def checkpoint_nmi(
    method, checkpoint: str | Path, images: torch.Tensor, normalization: str = "min"
) -> list[float]:
    """Load a prompt checkpoint into ``method`` (checked against it) and compute its per-block NMI."""
    from vlprompt.artifacts.checkpoint import load_prompts

    load_prompts(method, checkpoint)
    return method_nmi(method, images, normalization)


def nmi_record(values: list[float], prefix: str = "nmi") -> dict[str, float]:
    """Flat JSONL-friendly record: {"nmi/block0": ..., ..., "nmi/mean": ...}."""
    record = {f"{prefix}/block{i}": v for i, v in enumerate(values)}
    record[f"{prefix}/mean"] = sum(values) / len(values) if values else 0.0
    return record


@dataclass
class NMIOptions(ValidatedConfig):
    """NMI logging of a run (the run config's ``nmi`` section): off unless ``every`` > 0."""

    config_name = "nmi"

    every: int = option(0, help="log per-block NMI every N optimizer steps (0: off)", range=(0, None))
    images: int = option(16, help="probe images: the first N training images, eval transform", range=(1, None))
    normalization: str = option("min", help="normalisation of the mutual information", choices=NORMALIZATIONS)

    @property
    def enabled(self) -> bool:
        return self.every > 0


class NMICallback(Callback):
    """Logs per-block NMI (``nmi/block<i>``, ``nmi/mean``) to the trainer's metrics at step 0, once the
    method's ``setup`` has run (SPT's prompts are initialised by then), and every ``every`` optimizer steps,
    on a fixed probe: the first ``images`` training images with the backbone's eval transform."""

    def __init__(self, every: int, images: int = 16, normalization: str = "min") -> None:
        check_range("NMICallback", "every", every, 1)
        self.options = NMIOptions(every, images, normalization)
        self.probe: torch.Tensor | None = None

    def on_fit_start(self, trainer: Trainer, task: TaskData) -> None:
        method = trainer.method
        prompts = getattr(method, "prompts", None)
        if not isinstance(prompts, VisualPrompts) or prompts.location != "prepend":
            raise ConfigError(
                "NMI logging (nmi.every) measures visual prompt tokens against "
                f"patch tokens, and method '{method.method_name}' has no visual prompt tokens in the sequence "
                "(pixel prompts or prompts added to the tokens have none). Use it with vpt-* or spt-* at "
                "location=prepend, or remove the option."
            )
        dataset = task.train.with_transform(eval_transform(method.backbone.preprocess))
        count = min(self.options.images, len(dataset))
        self.probe = torch.stack([dataset[i][0] for i in range(count)])
        self._log(trainer, 0)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if step % self.options.every == 0:
            self._log(trainer, step)

    def _log(self, trainer: Trainer, step: int) -> None:
        values = method_nmi(trainer.method, self.probe, self.options.normalization)
        trainer.log_metrics({"step": step, **nmi_record(values)})
