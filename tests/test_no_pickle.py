"""Nothing a run folder or a prompt folder holds is ever unpickled (issue 19 item 1).

An attacker's file is planted under every name the library reads back from such a folder: ``torch.save`` of an
object whose ``__reduce__`` creates a marker file (what loading the old ``resume.pt`` would have run). The command
that reads that name is run; the marker must never appear, and the command either refuses with an error naming
the file or, for files that are only ever a cache or a display, goes on without them.
"""
from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import pytest
import torch
from test_run_dir import interrupt_after_epochs, train

from vlprompt.core.errors import VlpromptError


class Payload:
    """Unpickling this creates ``marker`` (builtins.open in write mode): proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(path: Path, marker: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"state": Payload(marker)}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A finished run folder and an unfinished one (stopped after epoch 1 with its resume state)."""
    root = tmp_path_factory.mktemp("sources")
    train(root / "finished")
    monkeypatch = pytest.MonkeyPatch()
    interrupt_after_epochs(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(root / "unfinished")
    monkeypatch.undo()
    return {"finished": root / "finished", "unfinished": root / "unfinished"}


def copy_of(folders: dict, kind: str, tmp_path: Path) -> Path:
    target = tmp_path / kind
    shutil.copytree(folders[kind], target)
    return target


def evaluate(folder: Path) -> None:
    from vlprompt.artifacts.pretrained import from_pretrained

    from_pretrained(folder)


# name -> (which folder, the command that reads it)
READERS = {
    "config.json": ("finished", train),
    "results.json": ("finished", train),
    "resume.safetensors": ("unfinished", train),
    "resume.pt": ("unfinished", train),  # vlprompt 0.1's pickle: refused by name, never opened
    "indices/fewshot_world-object_train_s2_seed1.json": ("unfinished", train),
    "prompts.safetensors": ("finished", evaluate),
    "prompt_config.json": ("finished", evaluate),
    "sweep.json": ("unfinished", "sweep"),
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_planted_pickle_is_refused_naming_the_file_and_never_run(name, folders, tmp_path):
    kind, command = READERS[name]
    folder = copy_of(folders, kind, tmp_path)
    marker = tmp_path / "PWNED"
    if name.startswith("indices/"):
        [index] = list((folder / "indices").glob("*train*.json"))  # the run's own few-shot index
        name = f"indices/{index.name}"
    plant(folder / name, marker)
    if command == "sweep":
        from vlprompt.sweep.runner import FAILED, execute_run

        assert execute_run(folder) == FAILED
        message = (folder / "error.txt").read_text()
    else:
        with pytest.raises(VlpromptError) as error:
            command(folder)
        message = str(error.value)
    assert not marker.exists()
    assert str(folder / name) in message


def test_legacy_prompt_config_name_is_refused_too(folders, tmp_path):
    """0.1 folders hold prompts.json instead of prompt_config.json: read as JSON only."""
    folder = copy_of(folders, "finished", tmp_path)
    (folder / "prompt_config.json").unlink()
    marker = tmp_path / "PWNED"
    plant(folder / "prompts.json", marker)
    with pytest.raises(VlpromptError, match="prompts.json"):
        evaluate(folder)
    assert not marker.exists()


def test_files_read_only_for_display_or_as_a_cache_are_skipped_without_running_anything(folders, tmp_path, caplog):
    """metrics.jsonl (NMI plots), README.md (the model card), .lock (a pid), error.txt, a feature cache file:
    never parsed as anything but text, JSON or safetensors; a bad one is skipped (a cache is rebuilt)."""
    from test_features import KEY, CountingEncoder, make_dataset

    from vlprompt.analysis.plots import read_nmi
    from vlprompt.artifacts.card import write_model_card
    from vlprompt.data.features import encode_dataset
    from vlprompt.sweep.runner import _first_error_line

    folder = copy_of(folders, "finished", tmp_path)
    marker = tmp_path / "PWNED"
    for name in ("metrics.jsonl", "README.md", ".lock", "error.txt"):
        plant(folder / name, marker)
    assert read_nmi(folder) == {}
    write_model_card(folder)  # a README that is not ours (undecodable) is left alone
    train(folder)  # finished, same config: takes the lock (pid rewritten), reads config and results
    from vlprompt.artifacts.run_dir import RunDir

    assert _first_error_line(RunDir(folder))  # text, whatever bytes
    cache = tmp_path / "cache"
    dataset = make_dataset(n=4)
    first = encode_dataset(CountingEncoder(), dataset, batch_size=2, cache_dir=cache, cache_key=KEY)
    [cached] = list(cache.glob("*.safetensors"))
    plant(cached, marker)
    with caplog.at_level(logging.WARNING):
        again = encode_dataset(CountingEncoder(), dataset, batch_size=2, cache_dir=cache, cache_key=KEY)
    assert torch.equal(first, again)
    assert str(cached) in caplog.text and "rebuilding" in caplog.text
    assert not marker.exists()


def test_the_resume_state_round_trips_every_value_exactly(tmp_path):
    """AdamW's buffers and step counters, SGD's missing momentum buffer, every generator, the history's floats
    and the best-val snapshot come back equal, from safetensors + JSON alone."""
    import random

    import numpy as np

    from vlprompt.artifacts.resume_state import load_resume_state, save_resume_state
    from vlprompt.core.seeding import rng_state, set_rng_state

    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    adamw = torch.optim.AdamW(params, lr=1e-3, betas=(0.8, 0.95))
    params[0].grad, params[1].grad = torch.randn(3, 2), torch.randn(4)
    adamw.step()
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.0)  # momentum 0: its state holds None buffers
    sgd.step()
    random.random(), np.random.rand(), torch.rand(1)
    state = {
        "trainable": {"a": params[0].detach(), "b": params[1].detach()}, "epoch": 2, "micro": 3, "step": 11,
        "rng": rng_state(), "history": [{"step": 1, "loss": 0.1 + 0.2, "lr": 1e-3 / 3}],
        "best": (0.8451, {"a": params[0].detach() * 2}), "config": {"lr": 0.1, "max_grad_norm": None},
        "fingerprint": {"train.lr": 0.1},
    }
    for name, optimizer in (("adamw", adamw), ("sgd", sgd)):
        save_resume_state(tmp_path / f"{name}.safetensors", {**state, "optimizer": optimizer.state_dict()})
        loaded = load_resume_state(tmp_path / f"{name}.safetensors")
        original = optimizer.state_dict()
        assert loaded["optimizer"]["param_groups"] == [
            {**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in original["param_groups"]]
        for index, entries in original["state"].items():
            assert loaded["optimizer"]["state"][index].keys() == entries.keys()
            for key, value in entries.items():
                got = loaded["optimizer"]["state"][index][key]
                assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value
        optimizer.load_state_dict(loaded["optimizer"])  # accepted by the optimizer as it is
    assert {k: v for k, v in loaded.items() if k not in ("optimizer", "rng", "trainable", "best")} == {
        k: v for k, v in state.items() if k not in ("optimizer", "rng", "trainable", "best")}
    assert loaded["best"][0] == 0.8451 and torch.equal(loaded["best"][1]["a"], state["best"][1]["a"])
    assert all(torch.equal(loaded["trainable"][k], state["trainable"][k]) for k in state["trainable"])
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    set_rng_state(loaded["rng"])
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])
