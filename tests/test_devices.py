"""Where a rank's tensors live: its device under torchrun, the collectives' device, the saved CUDA generators.

There is no GPU here, so torch.cuda is monkeypatched where a GPU would answer; everything that runs on the
CPU (a real one-process gloo group) runs for real.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from vlprompt.core import distributed
from vlprompt.core.errors import ConfigError
from vlprompt.core.seeding import rng_state, set_rng_state


@pytest.fixture
def fake_gpus(monkeypatch):
    """torch.cuda answering as a machine with 4 GPUs; records set_device calls."""
    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(device))
    return calls


def test_each_rank_gets_its_local_gpu(fake_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.resolve_device("auto") == torch.device("cuda", 3)
    assert distributed.resolve_device("cuda") == torch.device("cuda", 3)
    assert fake_gpus == [torch.device("cuda", 3)] * 2  # made current, so NCCL and .cuda() land there too
    assert distributed.resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index is kept
    assert distributed.resolve_device("cpu") == torch.device("cpu")


def test_outside_torchrun_cuda_is_gpu_zero_and_no_gpu_means_cpu(fake_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert distributed.resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        distributed.resolve_device("cuda")


def test_nccl_group_is_built_on_the_ranks_gpu(fake_gpus, monkeypatch):
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "init_process_group", lambda backend: seen.update(backend=backend, device=fake_gpus[:]))
    assert distributed.init_from_env()
    assert seen == {"backend": "nccl", "device": [1]}


def test_collectives_run_on_the_current_gpu_with_nccl_and_on_cpu_with_gloo(monkeypatch):
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    assert distributed.collective_device() == torch.device("cuda", 2)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert distributed.collective_device() == torch.device("cpu")


class _Handed(Exception):
    pass


@pytest.mark.parametrize("call", [lambda: distributed.sum_scalar(1.5),
                                  lambda: distributed.all_reduce_sum_([torch.ones(3), torch.ones(2, 2)])])
def test_reductions_hand_the_collective_a_tensor_on_the_collective_device(monkeypatch, call):
    """NCCL refuses CPU tensors: what reaches all_reduce must be on collective_device() ('meta' stands in for
    a GPU here, since a CPU tensor would pass unnoticed)."""
    handed = []

    def all_reduce(tensor, op=None):
        handed.append(tensor.device)
        raise _Handed

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "collective_device", lambda: torch.device("meta"))
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    with pytest.raises(_Handed):
        call()
    assert handed == [torch.device("meta")]


def test_one_process_gloo_group_reduces_and_gathers_on_cpu(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert distributed.collective_device() == torch.device("cpu")
        assert distributed.sum_scalar(2.5) == 2.5
        rows = torch.arange(6.0).reshape(3, 2)
        (gathered,) = distributed.all_gather_rows(rows)
        assert torch.equal(gathered, rows)
    finally:
        dist.destroy_process_group()


def test_resume_state_saves_and_restores_every_cuda_generator(fake_gpus, monkeypatch):
    saved = [torch.full((4,), i, dtype=torch.uint8) for i in range(4)]
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(states))
    state = rng_state()
    assert state["cuda"] is saved
    set_rng_state(state)
    assert restored == saved
    # Another GPU count cannot be mapped device by device: the CPU state is still restored, CUDA left alone.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    restored.clear()
    cpu = torch.get_rng_state()
    torch.rand(3)
    set_rng_state({**state, "torch": cpu})
    assert restored == [] and torch.equal(torch.get_rng_state(), cpu)


def test_cpu_only_state_has_no_cuda_generators_and_replays(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state = rng_state()
    assert state["cuda"] == []
    expected = torch.rand(2)
    set_rng_state(state)
    assert torch.equal(torch.rand(2), expected)


def test_eval_takes_device_and_batch_from_the_run_config_or_the_command_line(tmp_path, monkeypatch):
    from vlprompt import evaluate_run as evaluation
    from vlprompt.cli import main

    out = tmp_path / "run"
    assert main(["train", "method=linear", "backbone=tiny:timm_vit", "dataset=world-object", "shots=1",
                 "dataset_options={train_per_class: 2, val_per_class: 1, test_per_class: 2}",
                 "train.epochs=1", "train.eval_batch_size=5", "train.device=cpu", "train.progress=false",
                 f"--out={out}"]) == 0
    seen = []
    monkeypatch.setattr(evaluation, "scores", lambda method, data, **kw: seen.append(kw) or {"accuracy": 0.5})
    assert main(["eval", str(out)]) == 0
    assert main(["eval", str(out), "--device", "auto", "--batch-size", "7"]) == 0
    assert [(kw["device"], kw["batch_size"]) for kw in seen] == [("cpu", 5), ("auto", 7)]
