"""torch.distributed helpers for torchrun launches: rank, this rank's device, collectives, and how rank 0's
decisions reach the others.

This is the one distributed module (data/ shards the feature cache with it, train/ reduces gradients with it); it
imports nothing of vlprompt but its errors, so that it can sit at the bottom of the import graph.

Two rules keep ranks from diverging silently. Every collective has the same layout on every rank whatever
that rank computed (a rank with nothing to contribute sends zeros, never a shorter buffer). And a decision only
rank 0 can make (what to do with a run folder, whether to stop) is made once and sent to the others
(``broadcast_json``, ``any_rank``), never re-derived from files another rank may be changing.

Under torchrun every process sees every GPU; LOCAL_RANK says which one is its own. Collectives run on the
backend's device: NCCL only reduces CUDA tensors (on the rank's current device), gloo reduces CPU tensors, so
every helper here moves its buffer to ``collective_device()`` and the result back to where the caller had it.
"""
from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist

from vlprompt.core.errors import ConfigError, VlpromptError


class DistributedError(VlpromptError):
    """Ranks disagree on something they must share (their trained tensors, a decision of rank 0)."""


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
    # Torn down before the interpreter's own teardown: a gloo group left alive to static destruction can abort
    # the process at exit ("terminate called without an active exception") after its work has finished.
    atexit.register(_destroy_group)
    return True


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank (every rank gets the same answer): how all ranks agree to
    stop at the same step when only some of them received SIGTERM."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([int(flag)], dtype=torch.int64, device=collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def max_int(value: int) -> int:
    """The largest ``value`` over ranks."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def broadcast_json(value=None):
    """Rank 0's ``value`` (anything JSON can hold) on every rank; other ranks pass nothing.

    JSON bytes in a uint8 tensor, not ``broadcast_object_list``: that one pickles, and nothing vlprompt passes
    around is a pickle. The call is also a synchronisation point: a rank returns only once rank 0 has decided,
    so whatever rank 0 did to the run folder before deciding is done before any other rank reads it."""
    if not is_distributed():
        return value
    import json

    device = collective_device()
    payload = json.dumps(value).encode("utf-8") if rank() == 0 else b""
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if rank() == 0:
        buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return json.loads(bytes(buffer.cpu().tolist()).decode("utf-8"))


def check_same_on_all_ranks(digest: str, what: str) -> None:
    """Raise DistributedError on every rank unless all ranks hold the same ``digest`` (a hex sha256) of
    ``what``: ranks that start from different tensors would train different models and average their gradients
    as if they were one."""
    if not is_distributed():
        return
    local = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8, device=collective_device())
    gathered = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    digests = [bytes(t.cpu().tolist()).hex() for t in gathered]
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise DistributedError(
            f"Rank(s) {differ} hold other {what} than rank 0 at the start of training (sha256 {digests[0][:12]} "
            f"on rank 0, {digests[differ[0]][:12]} on rank {differ[0]}). Every rank must build the same model: "
            "seed it the same way (seed_everything before creating the method), load the same checkpoint, and "
            "let only rank 0 decide about the run folder (run_experiment does). Nothing was trained."
        )


def decided_by_rank_zero(decide):
    """Run ``decide()`` on rank 0 only and return its JSON-able result on every rank.

    For decisions that read or change shared files (resume, restart or overwrite a run folder): the other
    ranks never re-derive them from files rank 0 may be changing at that moment. If ``decide`` raises on rank
    0, rank 0 re-raises it and every other rank raises DistributedError with its message, instead of waiting
    forever in the next collective."""
    if not is_distributed():
        return decide()
    if rank() == 0:
        try:
            value = decide()
        except Exception as error:
            broadcast_json({"error": f"{error}"})
            raise
        broadcast_json({"value": value})
        return value
    message = broadcast_json()
    if "error" in message:
        raise DistributedError(f"Rank 0 stopped before training, so this rank stops too: {message['error']}")
    return message["value"]
