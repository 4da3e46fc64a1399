"""torch.distributed helpers for torchrun launches: rank, this rank's device, gradient and metric reduction.

Under torchrun every process sees every GPU; LOCAL_RANK says which one is its own. Collectives run on the
backend's device: NCCL only reduces CUDA tensors (on the rank's current device), gloo reduces CPU tensors, so
every helper here moves its buffer to ``collective_device()`` and the result back to where the caller had it.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from vlprompt.errors import ConfigError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def resolve_device(name: str) -> torch.device:
    """The device a run uses: 'auto' is CUDA when present; a bare 'cuda' (or 'auto') under torchrun is this
    rank's own GPU, cuda:<LOCAL_RANK>, made current so that NCCL and plain ``.cuda()`` calls land there too.
    An explicit index ('cuda:1') is taken as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device = {name!r} but torch sees no CUDA GPU here (torch {torch.__version__}). Use device=cpu or "
            "device=auto (for 'vlprompt eval': --device cpu)."
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); returns whether it did.

    With NCCL the rank's GPU is made current first, so that the group's communicators are built on it
    rather than all on cuda:0."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return True


def collective_device() -> torch.device:
    """Where collective buffers must live: this rank's current GPU for NCCL, the CPU for gloo (and alone)."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(tensors: list[torch.Tensor]) -> None:
    """Sum tensors over ranks in place (one flat buffer on the collective device, one collective)."""
    if not is_distributed() or not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(collective_device()) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for tensor in tensors:
        count = tensor.numel()
        tensor.copy_(flat[offset : offset + count].view_as(tensor))
        offset += count


def sum_scalar(value: float) -> float:
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def all_gather_rows(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same trailing shape, any number of rows), in rank order, on the caller's device.

    Rows are padded to the longest rank's count for the collective (gloo and NCCL need equal shapes) and cut
    back afterwards; the values themselves are copied, never recomputed, so gathering is exact."""
    if not is_distributed():
        return [tensor]
    device = collective_device()
    counts = torch.zeros(world_size(), dtype=torch.long, device=device)
    counts[rank()] = tensor.shape[0]
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    longest = int(counts.max())
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor.to(device)
    gathered = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    return [part[: int(count)].to(tensor.device) for part, count in zip(gathered, counts.tolist())]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
