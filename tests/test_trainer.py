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

from vlprompt.backbones.tiny import tiny_timm_vit
from vlprompt.data.base import ImageDataset, LabelSpace, TaskData
from vlprompt.errors import CheckpointError, VlpromptError
from vlprompt.methods import create_method
from vlprompt.seeding import seed_everything
from vlprompt.train import TrainConfig, Trainer, evaluate, load_prompts, save_prompts


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
    from vlprompt.methods import create_method
    from vlprompt.seeding import seed_everything
    from vlprompt.train import TrainConfig, Trainer

    kill_at = int(sys.argv[2])
    seed_everything(3)
    task = make_task()
    method = create_method("vpt-deep", tiny_timm_vit(seed=0), task.labels)
    if kill_at > 0:
        def on_step_end(step, trainer):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        method.on_step_end = on_step_end
    config = TrainConfig(epochs=3, batch_size=4, lr=0.05, seed=3, progress=False, checkpoint_every=1,
                         augment="flip")
    Trainer(method, config, out_dir=sys.argv[1]).fit(task)
    """
)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path: Path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "a"), "7"], env=env, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "a" / "resume.safetensors").exists()  # state of step 6, in the middle of epoch 2 (5 steps/epoch)
    resumed = subprocess.run([sys.executable, str(script), str(tmp_path / "a"), "0"], env=env, check=False)
    assert resumed.returncode == 0
    straight = subprocess.run([sys.executable, str(script), str(tmp_path / "b"), "0"], env=env, check=False)
    assert straight.returncode == 0
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "prompts.safetensors"))
    b = load_file(str(tmp_path / "b" / "prompts.safetensors"))
    assert_same_state(a, b)
    assert not (tmp_path / "a" / "resume.safetensors").exists()


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
