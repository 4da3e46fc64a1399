"""Run folders never lie (issue 13): each fault is injected here and its outcome asserted, either the right
result (identical to an undisturbed run) or a clear error, with nothing complete lost."""
from __future__ import annotations

import dataclasses
import errno
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlprompt.artifacts.run_dir import RunConfigMismatch, RunDir, RunLockedError
from vlprompt.core import io as io_utils
from vlprompt.core.io import WriteError, append_jsonl, atomic_write_text
from vlprompt.experiment import run_config_from_dict, run_experiment
from vlprompt.train import trainer as trainer_module

SMALL = {"train_per_class": 4, "val_per_class": 2, "test_per_class": 2}


def run_values(out: Path, **changes) -> dict:
    values = {
        "method": "linear", "backbone": "tiny:timm_vit", "dataset": "world-object", "shots": 2, "seed": 1,
        "dataset_options": dict(SMALL),
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "progress": False, "log_every": 1},
        "out": str(out),
    }
    for key, value in changes.items():
        if key.startswith("train."):
            values["train"] = {**values["train"], key.split(".", 1)[1]: value}
        else:
            values[key] = value
    return values


def train(out: Path, restart: bool = False, overwrite: bool = False, **changes) -> list[dict]:
    return run_experiment(run_config_from_dict(run_values(out, **changes)), restart=restart, overwrite=overwrite)


def interrupt_after_epochs(monkeypatch, epochs: int) -> None:
    """Make the next run stop like a Ctrl-C right after its resume state of epoch ``epochs`` is written."""
    original = trainer_module.Trainer._save_resume

    def save_then_stop(self, path, optimizer, epoch, micro, best):
        original(self, path, optimizer, epoch, micro, best)
        if epoch == epochs:
            monkeypatch.setattr(trainer_module.Trainer, "_save_resume", original)
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "_save_resume", save_then_stop)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One undisturbed run: the reference every recovered run must equal."""
    out = tmp_path_factory.mktemp("straight") / "run"
    return out, train(out)


def same_result(a: Path, b: Path) -> None:
    ra, rb = RunDir(a).read_results(), RunDir(b).read_results()
    assert [r["accuracy"] for r in ra] == [r["accuracy"] for r in rb]
    pa, pb = load_file(RunDir(a).prompts), load_file(RunDir(b).prompts)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def metric_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in RunDir(folder).metrics.read_text().splitlines()]


# ----- 13.1 resume under another config -----
def test_resume_under_another_config_is_refused_naming_the_fields(tmp_path, monkeypatch, straight, caplog):
    out = tmp_path / "run"
    interrupt_after_epochs(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(out)
    assert RunDir(out).resume.exists() and not RunDir(out).is_finished()
    with pytest.raises(RunConfigMismatch) as refused:
        train(out, **{"train.lr": 0.5, "train.epochs": 8})
    text = str(refused.value)
    assert "train.lr: 0.01 -> 0.5" in text and "train.epochs: 3 -> 8" in text
    assert "--restart" in text and "new --out" in text and "same config" in text
    assert RunDir(out).resume.exists()  # nothing was touched
    # The same config resumes, says so, and ends exactly where the undisturbed run ends.
    with caplog.at_level(logging.WARNING):
        train(out)
    assert "resuming from step 6" in caplog.text  # 24 classes x 2 shots / batch 8 = 6 steps per epoch
    same_result(out, straight[0])
    # One history: the resumed folder's metrics equal the undisturbed run's, no line twice.
    lines = metric_lines(out)
    assert lines == metric_lines(straight[0])
    assert len({json.dumps(r, sort_keys=True) for r in lines}) == len(lines)


def test_restart_discards_the_unfinished_run_and_trains_the_new_config(tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupt_after_epochs(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(out)
    train(out, restart=True, **{"train.lr": 0.02})
    saved = RunDir(out).read_config()
    assert saved["train_resolved"]["lr"] == 0.02 and saved["fingerprint"]["fields"]["train.lr"] == 0.02
    assert [r["step"] for r in metric_lines(out) if "loss" in r] == list(range(1, 19))  # one history


def test_train_help_documents_resume(capsys):
    from vlprompt.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "resumes an interrupted run" in text and "--restart" in text and "--overwrite" in text


# ----- 13.2 the NaN trap -----
def test_a_non_finite_state_is_never_saved(tmp_path):
    from vlprompt.backbones.tiny import tiny_timm_vit
    from vlprompt.data.registry import load_dataset
    from vlprompt.methods import create_method
    from vlprompt.train import TrainConfig, Trainer

    task = load_dataset("world-object", **SMALL)
    method = create_method("linear", tiny_timm_vit(seed=0), task.labels)

    def poison(step, trainer):  # the last step of epoch 1 (96 images / 8) leaves an infinite weight behind
        if step == 12:
            with torch.no_grad():
                trainer.method.head.weight.fill_(float("inf"))

    method.on_step_end = poison
    config = TrainConfig(epochs=3, batch_size=8, lr=0.01, progress=False, checkpoint_every=0)
    with pytest.raises(Exception, match="became non-finite") as error:
        Trainer(method, config, out_dir=tmp_path).fit(task)
    assert "--restart" in str(error.value) and "train.lr" in str(error.value)
    assert not RunDir(tmp_path).resume.exists()  # no poisoned state to resume from
    assert not RunDir(tmp_path).prompts.exists()


# ----- 13.3 finished runs -----
def test_finished_run_of_another_config_is_refused_and_overwrite_replaces_it(tmp_path, straight):
    out = tmp_path / "run"
    train(out)
    before = RunDir(out).prompts.read_bytes()
    with pytest.raises(RunConfigMismatch) as refused:
        train(out, method="vpt-shallow")
    assert "method: 'linear' -> 'vpt-shallow'" in str(refused.value) and "--overwrite" in str(refused.value)
    assert RunDir(out).prompts.read_bytes() == before and RunDir(out).read_results()[0]["method"] == "linear"
    records = train(out, overwrite=True, method="vpt-shallow")
    assert records[0]["method"] == "vpt-shallow" == RunDir(out).read_results()[0]["method"]
    assert RunDir(out).read_config()["run"]["method"] == "vpt-shallow"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging or replaced folder left behind
    assert len(metric_lines(out)) == len(metric_lines(straight[0]))  # one history, not two


def test_rerun_of_a_finished_run_with_the_same_config_is_a_no_op(straight, caplog, capsys):
    out, records = straight
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".lock"}
    with caplog.at_level(logging.WARNING):
        again = train(out)
    assert again == records and "nothing to do" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".lock"} == stamp
    from vlprompt.cli import main

    assert main(["train", *(f"{k}={json.dumps(v)}" for k, v in run_values(out).items())]) == 0
    assert "nothing to do" in capsys.readouterr().out


# ----- 13.4 locks and orphans -----
HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from vlprompt.artifacts.run_dir import RunDir
    with RunDir(sys.argv[1]).lock():
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_a_locked_folder_is_refused_while_its_holder_lives_and_free_once_it_dies(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}, alive"):
            train(out)
        from vlprompt.sweep import RunSpec, execute_run

        spec_folder = tmp_path / "sweep" / "runs" / "r"
        with RunDir(spec_folder).lock():
            pass
        RunDir(spec_folder).spec.write_text(json.dumps({"run": run_values(spec_folder)}))
        other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(spec_folder)], stdout=subprocess.PIPE,
                                 text=True)
        assert other.stdout.readline().strip() == "locked"
        assert execute_run(spec_folder) == "locked"  # a sweep skips it, with a message
        other.kill()
        other.wait()
        assert RunSpec  # the sweep's types import without a cycle
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train(out)  # the kernel released the dead holder's lock
    assert RunDir(out).is_finished()


ORPHAN = textwrap.dedent(
    """
    import os, subprocess, sys, time
    env = {**os.environ, "VLPROMPT_SWEEP_PARENT": str(os.getpid())}
    code = ("import os, time; from vlprompt.sweep.parent_death import die_with_parent; "
            "die_with_parent(int(os.environ['VLPROMPT_SWEEP_PARENT'])); print('armed', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    assert child.stdout.readline().strip() == "armed"
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


def test_sweep_workers_die_with_a_killed_parent(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(worker, 0)  # alive
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        try:
            os.waitpid(worker, os.WNOHANG)  # reaped by init normally; this is only for a zombie child of ours
        except ChildProcessError:
            pass
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the sweep worker outlived its killed parent")


def test_local_workers_get_one_gpu_each_round_robin(monkeypatch):
    from vlprompt.sweep.launchers import visible_gpus, worker_env

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    gpus = visible_gpus()
    assert gpus == ["0", "1"]
    assert [worker_env(3, slot, gpus)["CUDA_VISIBLE_DEVICES"] for slot in range(3)] == ["0", "1", "0"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "4,6"}) == ["4", "6"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert visible_gpus({}) == [] and "CUDA_VISIBLE_DEVICES" not in worker_env(2, 0, [], base={})


# ----- 13.5 a full disk -----
def no_space_for(monkeypatch, name: str) -> None:
    """ENOSPC from the atomic writer's fsync for files called ``name`` (a full disk, as the kernel says it)."""
    real = io_utils.os.fsync

    def fsync(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(io_utils.os, "fsync", fsync)


def test_disk_full_at_the_results_is_one_clear_error_and_the_rerun_finishes_identically(tmp_path, monkeypatch,
                                                                                        straight):
    out = tmp_path / "run"
    no_space_for(monkeypatch, "results.json")
    with pytest.raises(WriteError) as error:
        train(out)
    text = str(error.value)
    assert "No space left on device" in text and str(out) in text and "free" in text and "intact" in text
    run = RunDir(out)
    assert not run.is_finished() and run.read_config()["run"]["method"] == "linear"
    assert run.resume.exists()  # prompts without results are not a finished run: the state is kept
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    train(out)
    same_result(out, straight[0])


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB tmpfs (needs root; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    gc.collect()  # the failed torch.save's file object lives in the kept traceback until collected
    if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_is_one_clear_error_and_the_rerun_finishes_identically(small_disk, straight):
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"0" * (free - 24 * 1024))  # room for the config and metrics, not for a resume state
    out = small_disk / "run"
    with pytest.raises(WriteError) as error:
        train(out)
    text = str(error.value)  # safetensors' writer fails first, on resume.safetensors
    assert "resume.safetensors" in text and "the disk is full" in text and str(out) in text and "free" in text
    assert "intact" in text
    assert RunDir(out).read_config()["run"]["method"] == "linear"  # complete, readable
    assert not RunDir(out).is_finished() and not list(out.glob(".*.tmp"))
    filler.unlink()
    train(out)
    same_result(out, straight[0])


def test_safetensors_write_failure_is_the_same_clear_error(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from vlprompt.artifacts import resume_state

    def full(tensors, path, metadata=None):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                              'space left on device" })')

    monkeypatch.setattr(resume_state, "save_file", full)
    with pytest.raises(WriteError, match="resume.safetensors") as error:
        train(tmp_path / "run")
    assert "free" in str(error.value)


def test_a_failed_metrics_append_leaves_no_half_line(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1})
    real = os.write
    monkeypatch.setattr(io_utils.os, "write", lambda fd, data: real(fd, data[:5]) and 5)
    with pytest.raises(WriteError):
        append_jsonl(path, {"step": 2, "loss": 0.5})
    assert path.read_text() == '{"step": 1}\n'


# ----- 13.6 evaluation of run folders -----
def test_relative_root_is_stored_resolved_and_eval_root_is_honoured(tmp_path, monkeypatch, capsys):
    from vlprompt.cli import main
    from vlprompt.data.world.export import export_world_task

    monkeypatch.chdir(tmp_path)
    export_world_task("object", "data/objects", per_class=2)
    assert main(["train", "method=linear", "backbone=tiny:timm_vit", "dataset=imagefolder", "root=data/objects",
                 "shots=1", "train.epochs=1", "train.progress=false", "--out", "runs/r"]) == 0
    saved = json.loads(Path("runs/r/config.json").read_text())
    assert saved["run"]["root"] == str((tmp_path / "data/objects").resolve())
    assert saved["root_as_given"] == "data/objects"
    accuracy = json.loads(Path("runs/r/results.json").read_text())[0]["accuracy"]
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(tmp_path / "runs/r")]) == 0
    assert f"{accuracy:.4f}" in capsys.readouterr().out
    (tmp_path / "data/objects").rename(tmp_path / "moved")
    assert main(["eval", str(tmp_path / "runs/r"), "--root", str(tmp_path / "moved")]) == 0
    assert f"{accuracy:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("changes", [{"method": "zeroshot", "backbone": "world:clip"}, {"train.epochs": 0}])
def test_nothing_to_train_still_gives_an_evaluable_folder(tmp_path, capsys, changes):
    from vlprompt.cli import main

    out = tmp_path / "run"
    values = run_values(out, **changes)
    args = [f"{k}={json.dumps(v)}" for k, v in values.items() if k != "out"]
    assert main(["train", *args, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    accuracy = RunDir(out).read_results()[0]["accuracy"]
    if changes.get("method") == "zeroshot":
        assert "no trained tensors" in said
    else:
        assert "initial values" in said
    assert main(["eval", str(out)]) == 0
    assert f"{accuracy:.4f}" in capsys.readouterr().out


def test_python_api_writes_the_folder_the_cli_evaluates(tmp_path, capsys):
    from vlprompt.backbones.registry import create_backbone
    from vlprompt.cli import main
    from vlprompt.data.fewshot import few_shot_task
    from vlprompt.data.registry import load_dataset
    from vlprompt.eval.tasks import evaluate
    from vlprompt.methods import create_method
    from vlprompt.train import TrainConfig, Trainer

    task = load_dataset("world-object", **SMALL)
    method = create_method("linear", create_backbone("world:mae"), task.labels)
    Trainer(method, TrainConfig(epochs=1, batch_size=8, progress=False), out_dir=tmp_path).fit(
        few_shot_task(task, 2, 1))
    saved = RunDir(tmp_path).read_config()
    assert saved["run"]["dataset"] == "world-object" and saved["run"]["dataset_options"] == SMALL
    assert main(["eval", str(tmp_path)]) == 0
    assert f"{evaluate(method, task.test):.4f}" in capsys.readouterr().out


# ----- 13.8 smaller truths -----
def test_results_record_the_shots_actually_used(tmp_path):
    records = train(tmp_path / "run", shots=16, **{"train.epochs": 1})
    assert records[0]["shots"] == 16
    assert records[0]["shots_used_min"] == records[0]["shots_used_max"] == 4  # 4 training images per class


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        append_jsonl(tmp_path / "b.jsonl", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.jsonl").stat().st_mode & 0o777 == 0o640


def test_world_export_into_a_non_empty_folder_is_refused_unless_overwrite(tmp_path):
    from vlprompt.core.errors import ConfigError
    from vlprompt.data.world.export import export_world_task

    export_world_task("object", tmp_path / "d", per_class=1)
    with pytest.raises(ConfigError, match="not empty"):
        export_world_task("count", tmp_path / "d", per_class=1)
    export_world_task("count", tmp_path / "d", per_class=1, overwrite=True)
    from vlprompt.data.registry import load_dataset

    count = load_dataset("world-count", train_per_class=1, val_per_class=0, test_per_class=1)
    assert sorted(p.name for p in (tmp_path / "d" / "train").iterdir()) == sorted(
        c.replace(" ", "_") for c in count.labels.classnames)


def test_a_default_given_explicitly_is_the_same_run(straight):
    from vlprompt.experiment import run_fingerprint

    plain = run_config_from_dict(run_values(straight[0]))
    explicit = run_config_from_dict({**run_values(straight[0]), "train": {**dataclasses.asdict(plain.train), "momentum": 0.9}})
    assert run_fingerprint(plain, plain.train_config()) == run_fingerprint(explicit, explicit.train_config())
    assert train(straight[0], **{"train.momentum": 0.9}) == straight[1]  # finished: a no-op, not a refusal
