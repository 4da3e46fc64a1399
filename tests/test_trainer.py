"""The single training loop: determinism, SIGKILL-and-resume, checkpoints, NaN handling, accumulation."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlprompt.artifacts.checkpoint import load_prompts, save_prompts
from vlprompt.backbones.tiny import tiny_timm_vit
from vlprompt.core.errors import CheckpointError, VlpromptError
from vlprompt.core.seeding import seed_everything
from vlprompt.data.base import ImageDataset, LabelSpace, TaskData
from vlprompt.eval.tasks import evaluate
from vlprompt.methods import create_method
from vlprompt.train import TrainConfig, Trainer


def make_task(n_per_class: int = 6, classes: int = 3, size: int = 32, seed: int = 0) -> TaskData:
    """Random images whose mean colour depends on the class: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    arrays, labels = [], []
    for label in range(classes):
        for _ in range(n_per_class):
            image = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
            image[..., label % 3] += 120
            arrays.append(image)
            labels.append(label)
    labelspace = LabelSpace([f"class{i}" for i in range(classes)])
    data = ImageDataset(arrays, labels, Image.fromarray, name="synthetic")
    return TaskData("synthetic", labelspace, data, data, data)


def train_once(method_name: str, out_dir=None, seed: int = 3, **train) -> tuple[dict, list]:
    seed_everything(seed)
    backbone = tiny_timm_vit(seed=0)
    task = make_task()
    method = create_method(method_name, backbone, task.labels)
    config = TrainConfig(epochs=2, batch_size=4, lr=0.05, seed=seed, progress=False, log_every=1, **train)
    result = Trainer(method, config, out_dir=out_dir).fit(task)
    return method.trainable_state_dict(), result.history


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def test_same_seed_gives_bit_identical_parameters_and_metrics():
    state_a, hist_a = train_once("vpt-deep", augment="flip")
    state_b, hist_b = train_once("vpt-deep", augment="flip")
    assert_same_state(state_a, state_b)
    assert hist_a == hist_b


def test_other_seed_gives_other_parameters():
    state_a, _ = train_once("vpt-shallow", seed=3)
    state_b, _ = train_once("vpt-shallow", seed=4)
    assert any(not torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_training_reduces_loss_and_learns():
    seed_everything(0)
    backbone = tiny_timm_vit(seed=0)
    task = make_task()
    method = create_method("linear", backbone, task.labels)
    before = evaluate(method, task.test)
    result = Trainer(method, TrainConfig(epochs=15, batch_size=6, lr=0.5, progress=False, log_every=1)).fit(task)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert losses[-1] < losses[0]
    assert evaluate(method, task.test) >= max(before, 0.6)


def test_grad_accumulation_matches_one_big_batch():
    task = make_task()
    states = []
    for batch_size, accum in ((8, 1), (4, 2)):
        seed_everything(1)
        method = create_method("linear", tiny_timm_vit(seed=0), task.labels)
        config = TrainConfig(epochs=2, batch_size=batch_size, grad_accum=accum, lr=0.1, momentum=0.0,
                             weight_decay=0.0, seed=1, progress=False)
        Trainer(method, config).fit(task)
        states.append(method.trainable_state_dict())
    # One epoch permutation; batch s of 8 == micro-batches 2s, 2s+1 of 4 (the last step holds 2 examples in
    # both), so the averaged gradients agree up to float rounding.
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=1e-5, atol=1e-6)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_trainer import make_task
    from vlprompt.backbones.tiny import tiny_timm_vit
    from vlprompt.core.errors import Preempted
    from vlprompt.methods import create_method
    from vlprompt.core.seeding import seed_everything
    from vlprompt.train import TrainConfig, Trainer

    kill_at, signum = int(sys.argv[2]), int(sys.argv[3])
    seed_everything(3)
    task = make_task()
    method = create_method("vpt-deep", tiny_timm_vit(seed=0), task.labels)
    if kill_at > 0:
        def on_step_end(step, trainer):
            if step == kill_at:
                os.kill(os.getpid(), signum)
        method.on_step_end = on_step_end
    # Two DataLoader workers: forked while the run folder is locked, they must not keep it locked after a kill.
    config = TrainConfig(epochs=3, batch_size=4, lr=0.05, seed=3, progress=False, checkpoint_every=1,
                         augment="flip", num_workers=2)
    try:
        Trainer(method, config, out_dir=sys.argv[1]).fit(task)
    except Preempted as error:
        print(error, file=sys.stderr)
        sys.exit(143)
    """
)


def run_script(script: Path, out: Path, kill_at: int, signum: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), str(out), str(kill_at), str(signum)], env=env,
                          capture_output=True, text=True, check=False, timeout=600)


def test_sigkill_or_sigterm_mid_epoch_then_resume_is_bit_identical(tmp_path: Path):
    """SIGKILL: the rerun resumes from the last saved state (checkpoint_every=1), at once — the killed
    process's DataLoader workers may still be alive, and they do not hold the run folder's lock. SIGTERM (what
    SLURM and Kubernetes send): the run saves the state of the step boundary it reaches, says a rerun resumes,
    and stops. Both reruns end bit-identical to a run never interrupted."""
    from safetensors.torch import load_file

    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    killed = run_script(script, tmp_path / "a", 7, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "a" / "resume.safetensors").exists()  # step 6, mid epoch 2 (5 steps/epoch)
    resumed = run_script(script, tmp_path / "a", 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 6" in resumed.stderr  # killed inside step 7, before its state was saved
    terminated = run_script(script, tmp_path / "c", 7, signal.SIGTERM)
    assert terminated.returncode == 143, terminated.stderr[-2000:]
    assert "Stopped on SIGTERM after step 7" in terminated.stderr and "resume" in terminated.stderr
    resumed = run_script(script, tmp_path / "c", 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 7" in resumed.stderr  # the boundary SIGTERM was caught at: no step lost
    straight = run_script(script, tmp_path / "b", 0)
    assert straight.returncode == 0, straight.stderr[-2000:]
    b = load_file(str(tmp_path / "b" / "prompts.safetensors"))
    for run in ("a", "c"):
        assert_same_state(load_file(str(tmp_path / run / "prompts.safetensors")), b)
        assert not (tmp_path / run / "resume.safetensors").exists()


def test_prompt_checkpoint_round_trip_holds_no_backbone_weight(tmp_path: Path):
    state, _ = train_once("vpt-shallow", out_dir=tmp_path / "run")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "prompts.safetensors"))
    assert set(saved) == set(state)
    assert not any(name.startswith(("visual.", "backbone.", "text.")) for name in saved)
    task = make_task()
    fresh = create_method("vpt-shallow", tiny_timm_vit(seed=0), task.labels)
    load_prompts(fresh, tmp_path / "run")
    assert_same_state(fresh.trainable_state_dict(), state)


def test_checkpoint_for_another_backbone_or_class_set_is_refused(tmp_path: Path):
    task = make_task()
    method = create_method("linear", tiny_timm_vit(seed=0), task.labels)
    save_prompts(method, tmp_path / "ck")
    other_backbone = tiny_timm_vit(kind="mae", seed=0)
    with pytest.raises(CheckpointError, match="backbone"):
        load_prompts(create_method("linear", other_backbone, task.labels), tmp_path / "ck")
    other_classes = LabelSpace(["x", "y", "z"])
    with pytest.raises(CheckpointError, match="class"):
        load_prompts(create_method("linear", tiny_timm_vit(seed=0), other_classes), tmp_path / "ck")
    with pytest.raises(CheckpointError, match="trained with method"):
        load_prompts(create_method("vpt-shallow", tiny_timm_vit(seed=0), task.labels), tmp_path / "ck")


def test_nan_loss_stops_with_a_clear_error_and_keeps_files(tmp_path: Path):
    task = make_task()
    method = create_method("linear", tiny_timm_vit(seed=0), task.labels)
    with torch.no_grad():
        method.head.weight.fill_(float("nan"))
    with pytest.raises(VlpromptError, match="loss became nan"):
        Trainer(method, TrainConfig(epochs=1, batch_size=4, progress=False), out_dir=tmp_path).fit(task)
    assert not (tmp_path / "prompts.safetensors").exists()


def test_unwritable_output_folder_fails_before_training(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    method = create_method("linear", tiny_timm_vit(seed=0), make_task().labels)
    with pytest.raises(VlpromptError, match="not writable"):
        Trainer(method, TrainConfig(epochs=1), out_dir=blocker / "sub")
