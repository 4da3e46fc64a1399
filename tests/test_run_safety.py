"""Issue 19 items 4-5: files follow the umask without the umask being touched, device='mps' is refused,
train.deterministic sets what it says and changes nothing on CPU, and a killed --overwrite leaves nothing behind."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_run_dir import interrupt_after_epochs, train

from vlprompt.core.errors import ConfigError
from vlprompt.train import TrainConfig

UMASK_SCRIPT = textwrap.dedent(
    """
    import os, stat, sys
    sys.path.insert(0, {tests!r})
    os.umask(int(sys.argv[2], 8))
    def no_umask(*args):  # reading the umask by flipping it races with other threads' file creation
        raise AssertionError("os.umask called while writing")
    os.umask = no_umask
    from test_trainer import make_task
    from vlprompt.artifacts.resume_state import save_resume_state
    from vlprompt.backbones.tiny import tiny_timm_vit
    from vlprompt.core.io import atomic_write_json, append_jsonl
    from vlprompt.methods import create_method
    from vlprompt.train import TrainConfig, Trainer

    out = sys.argv[1]
    method = create_method("linear", tiny_timm_vit(seed=0), make_task().labels)
    Trainer(method, TrainConfig(epochs=1, batch_size=8, progress=False, num_workers=0), out_dir=out).fit(make_task())
    import torch
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.1)
    from vlprompt.core.seeding import rng_state
    save_resume_state(out + "/resume.safetensors", {{"trainable": method.trainable_state_dict(),
        "optimizer": optimizer.state_dict(), "rng": rng_state(), "best": (-1.0, None), "epoch": 0, "micro": 0,
        "step": 0, "history": [], "config": {{}}, "fingerprint": None}})
    atomic_write_json(out + "/extra.json", {{}})
    append_jsonl(out + "/extra.jsonl", {{}})
    for name in sorted(os.listdir(out)):
        if not os.path.isdir(os.path.join(out, name)):
            print(name, oct(stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode)))
    """
)


@pytest.mark.parametrize(("umask", "mode"), [("022", "0o644"), ("077", "0o600")])
def test_every_file_a_run_writes_follows_the_umask_and_the_umask_is_never_flipped(tmp_path, umask, mode):
    script = tmp_path / "write.py"
    script.write_text(UMASK_SCRIPT.format(tests=str(Path(__file__).parent)))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), umask], capture_output=True,
                          text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    modes = dict(line.split() for line in done.stdout.splitlines())
    for name in ("prompts.safetensors", "prompt_config.json", "config.json", "metrics.jsonl", "README.md",
                 "resume.safetensors", "extra.json", "extra.jsonl", ".lock"):
        assert modes.get(name) == mode, (name, modes)


def test_mps_is_refused_with_what_to_use_instead():
    with pytest.raises(ConfigError, match="'mps'.*not supported.*device=cpu"):
        TrainConfig(device="mps")


DETERMINISTIC = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    import torch
    from test_trainer import train_once
    plain, _ = train_once("vpt-deep")
    assert not torch.are_deterministic_algorithms_enabled()
    strict, _ = train_once("vpt-deep", deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert plain.keys() == strict.keys() and all(torch.equal(plain[k], strict[k]) for k in plain)
    print("ok")
    """
)


def test_deterministic_sets_torch_cublas_and_cudnn_and_changes_nothing_on_cpu(tmp_path):
    """In a subprocess: the switches are process-wide."""
    script = tmp_path / "det.py"
    script.write_text(DETERMINISTIC.format(tests=str(Path(__file__).parent)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_killed_overwrite_leaves_its_staging_folder_which_the_next_run_removes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    interrupt_after_epochs(monkeypatch, 1)  # the overwrite dies after its first epoch's resume state
    with pytest.raises(KeyboardInterrupt):
        train(out, overwrite=True, **{"train.lr": 0.02})
    staging = tmp_path / ".run.overwrite"
    assert (staging / "resume.safetensors").exists()  # what a killed overwrite leaves behind
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before
    train(out)  # the next run of the folder (here: the same config, nothing to train) cleans it up
    assert not staging.exists()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before
