"""The torchrun helpers' import path under train/ (the trainer's neighbours and older code import it here).

They live in vlprompt/distributed.py, below both data/ and train/, because the feature cache shards its
encoding over ranks too."""
from vlprompt.distributed import (
    all_gather_rows,
    all_reduce_sum_,
    barrier,
    collective_device,
    init_from_env,
    is_distributed,
    is_main_process,
    local_rank,
    rank,
    resolve_device,
    sum_scalar,
    world_size,
)

__all__ = [
    "all_gather_rows", "all_reduce_sum_", "barrier", "collective_device", "init_from_env", "is_distributed",
    "is_main_process", "local_rank", "rank", "resolve_device", "sum_scalar", "world_size",
]
