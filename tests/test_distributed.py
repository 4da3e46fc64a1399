"""Two torchrun processes (gloo, CPU) with a global batch of 8 match one process with a batch of 8."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_trainer import make_task
    from vlprompt.backbones.tiny import tiny_timm_vit
    from vlprompt.methods import create_method
    from vlprompt.seeding import seed_everything
    from vlprompt.train import TrainConfig, Trainer, distributed

    distributed.init_from_env()
    seed_everything(5)
    task = make_task(n_per_class=7)
    method = create_method("vpt-shallow", tiny_timm_vit(seed=0), task.labels)
    per_rank_batch = int(sys.argv[2]) // distributed.world_size()
    config = TrainConfig(epochs=2, batch_size=per_rank_batch, lr=0.05, seed=5, progress=False, augment="none",
                         log_every=1)
    Trainer(method, config, out_dir=sys.argv[1]).fit(task)
    """
)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path: Path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    subprocess.run([*torchrun, str(script), str(tmp_path / "two"), "8"], env=env, check=True, timeout=300)
    subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "8"], env=env, check=True, timeout=300)
    two = load_file(str(tmp_path / "two" / "prompts.safetensors"))
    one = load_file(str(tmp_path / "one" / "prompts.safetensors"))
    assert two.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5)
    # Only rank 0 wrote: one metrics file whose losses are the mean over ranks.
    lines_two = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    lines_one = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    assert len(lines_two) == len(lines_one)
