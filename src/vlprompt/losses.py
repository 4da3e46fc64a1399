"""Pure loss functions of the CLIP text-prompt methods (no modules, no state), testable on hand-made tensors."""
from __future__ import annotations

import torch
from torch import nn


def prograd_project(grad_ce: torch.Tensor, grad_kl: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """ProGrad's update for one tensor: remove (λ times) the part of G_d that conflicts with G_g.

    If ⟨G_d, G_g⟩ < 0: G = G_d − λ·(G_d·Ĝ_g)·Ĝ_g, else G = G_d; λ = 0 leaves plain CoOp's gradient.
    """
    dot = torch.sum(grad_ce * grad_kl)
    norm_sq = torch.sum(grad_kl * grad_kl)
    if lam == 0 or dot >= 0 or norm_sq == 0:
        return grad_ce
    return grad_ce - lam * (dot / norm_sq) * grad_kl


CLASSIFICATION_LOSSES = ("ce", "sigmoid")


def sigmoid_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss on image-class logits z = s·cos + b (the model's own objective).

    Every (image, class) pair is its own binary problem, positive for the image's class and negative for the
    others: −Σ_c log σ(±z_c), summed over classes and averaged over images, as SigLIP normalises by batch size.
    Unlike cross-entropy it depends on the logit bias b.
    """
    signs = 2.0 * nn.functional.one_hot(labels, logits.shape[-1]).to(logits.dtype) - 1.0
    return -nn.functional.logsigmoid(signs * logits).sum(dim=-1).mean()


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_teacher ‖ p_student), averaged over the batch (ProGrad's general-knowledge loss, T = 1)."""
    student = nn.functional.log_softmax(student_logits / temperature, dim=-1)
    teacher = nn.functional.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return nn.functional.kl_div(student, teacher, reduction="batchmean", log_target=True)


def kg_distance(learned: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
    """KgCoOp's knowledge-guided term: 1 − mean over classes of cos(t_c, t_c^hand); zero when they coincide."""
    cos = nn.functional.cosine_similarity(learned, hand.detach().to(learned.dtype), dim=-1)
    return 1.0 - cos.mean()


def gating_kl(hard_weights: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
    """KL(W_hard ‖ softmax(router)) over experts, batch mean: hard prompts tell the router where to look."""
    log_router = nn.functional.log_softmax(router_logits, dim=-1)
    target = hard_weights.detach().clamp_min(1e-12)
    return torch.sum(target * (target.log() - log_router), dim=-1).mean()


def grouped_text_ce(soft: torch.Tensor, hard: torch.Tensor, scale: float) -> torch.Tensor:
    """Each soft class feature must classify as its own class among the hard features of each template.

    ``soft`` [C, D] and ``hard`` [T, C, D] are normalised; the loss is the mean over templates t of
    CE(scale·soft @ hard[t]ᵀ, identity labels). With all templates of one group it is the mixture's
    semantically grouped text loss; with all templates of a task it is LASP's text-to-text loss.
    """
    targets = torch.arange(soft.shape[0], device=soft.device)
    logits = scale * torch.einsum("cd,tkd->tck", soft, hard.detach().to(soft.dtype))
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.repeat(hard.shape[0]))


def feature_l1(features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over every entry (PromptSRC's L_SCL-text and L_SCL-image, ``F.l1_loss`` mean)."""
    return nn.functional.l1_loss(features, anchors.detach().to(features.dtype), reduction="mean")


def logit_kl_per_entry(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """PromptSRC's L_SCL-logits: KL(p_teacher ‖ p_student) summed, times T², divided by the logits' B·C entries.

    Not ``kl_to_teacher``'s batch mean: the official code divides the summed KL by ``logits.numel()``.
    """
    student = nn.functional.log_softmax(student_logits / temperature, dim=-1)
    teacher = nn.functional.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    total = nn.functional.kl_div(student, teacher, reduction="sum", log_target=True)
    return total * temperature * temperature / student_logits.numel()


def gaussian_epoch_weights(epochs: int, mean: float, std: float) -> torch.Tensor:
    """PromptSRC's GPA weights: w_e ∝ N(e; mean, std²) for epochs e = 1..N, normalised to sum 1 ([N], float64).

    Computed as a softmax of the log-density so that a mean far from 1..N cannot underflow to all zeros; the
    normalising constant of the Gaussian cancels, as it does in the official normalised weights.
    """
    if std <= 0:
        raise ValueError(f"GPA std must be positive, got {std}")
    index = torch.arange(1, epochs + 1, dtype=torch.float64)
    return torch.softmax(-0.5 * ((index - mean) / std) ** 2, dim=0)


def class_adaptive_penalty(prototypes: torch.Tensor, anchors: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """CLAP's constraint: mean over classes of λ_c·‖w_c − t_c‖² (raw prototypes w and zero-shot features t)."""
    distance = (prototypes - anchors.detach().to(prototypes.dtype)).pow(2).sum(-1)
    return torch.mean(multipliers.detach().to(prototypes.dtype) * distance)


def class_confidence(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CLAP's multipliers λ_c: the mean softmax probability of class c over the samples labelled c (0 for a class
    without samples)."""
    probabilities = torch.softmax(logits.float(), dim=-1)
    one_hot = nn.functional.one_hot(labels, num_classes).float()
    return (probabilities * one_hot).sum(0) / one_hot.sum(0).clamp_min(1)
