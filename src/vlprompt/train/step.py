"""One optimizer step over ranks and micro-batches: which examples each rank computes, how its gradients are
accumulated, and how the ranks' gradients become the one gradient the optimizer sees.

The rule everything here keeps: a step over W ranks x A micro-batches averages exactly like one process with
one batch of the same examples. Each micro-batch's gradient is weighted by its share of the step's examples,
the ranks' weighted sums are added, and a method's gradient parts (ProGrad's G_d and G_g) are combined only
once they are the full step's.

Two things that only multi-process runs meet are handled here rather than left to chance:
- a rank's share of the epoch's last global batch can be empty (n mod (batch x world) < world). That rank runs
  no forward (a batch of zero images cannot be collated, a mean over zero losses is NaN) and adds nothing, but
  it still joins every collective, so the others do not wait for it forever;
- the reduction has a FIXED layout: every trainable tensor of every gradient part, zeros where this rank has
  no gradient (an empty share; MoCoOp's experts that no image of this rank routed to). Reducing only the
  gradients that exist would give ranks buffers of different layouts: gloo errors, NCCL may hang or add the
  wrong tensors together. A presence count travels in the same buffer, so a tensor that no rank gave a
  gradient keeps ``grad=None`` (the optimizer skips it, weight decay and momentum included) exactly as in one
  process.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from vlprompt.artifacts.checkpoint import tensors_checksum
from vlprompt.core import distributed

if TYPE_CHECKING:
    from vlprompt.methods.base import PromptMethod


def rank_slices(order: torch.Tensor, first: int, count: int, global_batch: int, rank: int,
                world: int) -> list[torch.Tensor]:
    """This rank's example indices for micro-batches ``first``..``count``-1 of an epoch whose order is
    ``order``: global batch m is ``order[m*B:(m+1)*B]``, dealt to ranks round-robin (rank r takes every
    world-th example from position r), so the union over ranks is the global batch. May be empty."""
    return [order[m * global_batch : (m + 1) * global_batch][rank::world] for m in range(first, count)]


def check_same_start(method) -> None:
    """Every rank must start from the same trainable tensors (same seed, same resume state): an all-gathered
    checksum, with a clear error on every rank if they differ. A no-op in one process."""
    distributed.check_same_on_all_ranks(tensors_checksum(method.trainable_state_dict()), "trainable tensors")


class GradientAccumulator:
    """The running, weighted gradient sums of the current optimizer step, per gradient part.

    ``grad_parts`` / ``combine_grads`` are the method's hooks (methods/base.py): a method whose update is not
    linear in the gradient (ProGrad's projection) splits it into parts that are summed separately."""

    def __init__(self, method: PromptMethod, params: list[torch.nn.Parameter], world_size: int) -> None:
        self.method = method
        self.params = params
        self.world_size = world_size
        self._sums: list[list[torch.Tensor | None]] = []

    def add(self, outputs: dict, local_n: int, step_total: int) -> None:
        """Backward of one micro-batch's ``outputs``, weighted by its share ``local_n / step_total`` of the
        step's examples (times world_size: the ranks' sums are divided by world_size after the reduction)."""
        parts = self.method.grad_parts(outputs, self.params)
        weight = local_n / step_total * self.world_size
        while len(self._sums) < len(parts):
            self._sums.append([None] * len(self.params))
        for sums, part in zip(self._sums, parts):
            for i, grad in enumerate(part):
                if grad is not None:
                    grad = grad.detach() * weight
                    sums[i] = grad if sums[i] is None else sums[i] + grad

    def take(self) -> list[torch.Tensor | None]:
        """The step's gradient per trainable tensor (reduced over ranks, parts combined); resets the sums."""
        sums, self._sums = self._sums, []
        if self.world_size > 1:
            sums = self._reduce(sums)
        if not sums:  # nothing computed anywhere (cannot happen with n >= 1, kept total for safety of callers)
            return [None] * len(self.params)
        return self.method.combine_grads(sums)

    def _reduce(self, sums: list[list[torch.Tensor | None]]) -> list[list[torch.Tensor | None]]:
        """Sum over ranks in one buffer of a layout every rank agrees on: for each part, a presence flag per
        tensor, then every tensor (zeros where absent). Ranks first agree on the number of parts (a rank
        with an empty share has computed none)."""
        n_parts = distributed.max_int(len(sums))
        sums = sums + [[None] * len(self.params) for _ in range(n_parts - len(sums))]
        dtype = self.params[0].dtype
        for param in self.params[1:]:
            dtype = torch.promote_types(dtype, param.dtype)
        device = distributed.collective_device()
        pieces = []
        for part in sums:
            pieces.append(torch.tensor([0.0 if g is None else 1.0 for g in part], dtype=dtype, device=device))
            for param, grad in zip(self.params, part):
                pieces.append(torch.zeros(param.numel(), dtype=dtype, device=device) if grad is None
                              else grad.detach().reshape(-1).to(device, dtype))
        flat = torch.cat(pieces)
        distributed.all_reduce_sum_([flat])
        reduced: list[list[torch.Tensor | None]] = []
        offset = 0
        for _ in sums:
            present = flat[offset : offset + len(self.params)]
            offset += len(self.params)
            part = []
            for i, param in enumerate(self.params):
                values = flat[offset : offset + param.numel()]
                offset += param.numel()
                part.append(None if present[i] == 0 else
                            (values.view_as(param) / self.world_size).to(param.device, param.dtype))
            reduced.append(part)
        return reduced


def forward_loss(method, batch: dict, precision: str, device: torch.device,
                 diverged: Callable[[str], Exception]) -> tuple[dict, float]:
    """The method's outputs on one micro-batch and its loss as a float; a missing or non-finite loss raises
    ``diverged(message)`` (only ever on a batch that holds examples: an empty share runs no forward)."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with autocast:
        outputs = method(batch)
    loss = outputs["loss"]
    if loss is None or not torch.isfinite(loss.detach()).all():
        raise diverged(f"The training loss became {None if loss is None else loss.item()}")
    return outputs, float(loss.detach())


def mean_loss(loss: float, local_n: int) -> float:
    """The micro-batch loss averaged over ranks by their example counts (an empty share weighs nothing)."""
    if not distributed.is_distributed():
        return loss
    sums = torch.tensor([loss * local_n, float(local_n)], dtype=torch.float64)
    distributed.all_reduce_sum_([sums])
    return float(sums[0] / sums[1]) if sums[1] else 0.0
