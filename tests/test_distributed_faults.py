"""Multi-process defects only two processes show (issue 19 item 3), each with two gloo processes in the fast suite:
a rank whose share of the last batch is empty (image path and feature path), MoCoOp with top_k=1 whose unpicked
experts have no gradient on some rank (the reduction's fixed layout), and `torchrun -m vlprompt.cli train --restart`
over an interrupted run folder (rank 0's decision broadcast, never re-derived; its refusal reaches rank 1).

Two processes are compared with one at rtol=1e-5 / atol=1e-7 (MoCoOp: see below): the ranks' gradients are the one-process gradient
summed in another order (two partial sums of a batch instead of one), so each step differs by a few float32
roundings, and a handful of small-lr steps keeps that far below 1e-5 relative (measured: README, determinism).
The two ranks, on the other hand, must agree with EACH OTHER bit for bit: they apply the same reduced gradient.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    from safetensors.torch import save_file
    from test_method_battery import CLASSES, GROUPS, TEMPLATES, ColourNoise
    from vlprompt.core import distributed
    from vlprompt.backbones.tiny import tiny_open_clip, tiny_timm_vit
    from vlprompt.data.base import ImageDataset, LabelSpace, TaskData
    from vlprompt.methods import create_method
    from vlprompt.methods.base import PromptMethod
    from vlprompt.core.seeding import seed_everything
    from vlprompt.train import TrainConfig, Trainer
    from vlprompt.train.step import GradientAccumulator

    distributed.init_from_env()
    world, rank, out = distributed.world_size(), distributed.rank(), sys.argv[1]
    # 9 images, global batch 8: the second batch holds one image, so with 2 ranks rank 1's share is empty.
    images = ImageDataset([f"toy/train/{{i}}" for i in range(9)], [i % 3 for i in range(9)], ColourNoise(),
                          name="toy:train")
    task = TaskData("toy", LabelSpace(list(CLASSES), list(TEMPLATES), dict(GROUPS)), images, images)
    saved = {{}}
    for name, backbone, options in (("vpt-shallow", tiny_timm_vit, {{}}),  # image path (collate)
                                    ("mocoop", tiny_open_clip, {{"top_k": 1}})):  # feature path, unrouted experts
        seed_everything(2)
        method = create_method(name, backbone(seed=0), task.labels, **options)
        config = TrainConfig(epochs=2, batch_size=8 // world, lr=0.01, seed=2, progress=False, augment="none",
                             num_workers=0, log_every=1)
        Trainer(method, config).fit(task)
        saved.update({{f"{{name}}/{{k}}": v for k, v in method.trainable_state_dict().items()}})

    # The reduction's layout on its own: rank 0 has a gradient for a only, rank 1 for b only, c has none anywhere.
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
    class PlainHooks:  # PromptMethod's default hooks (one part: the gradient of the loss), without a model
        grad_parts = PromptMethod.grad_parts
        combine_grads = PromptMethod.combine_grads
    accumulator = GradientAccumulator(PlainHooks(), params, world)
    for r in range(world):
        if r == rank:
            x = torch.tensor([1.0, 2.0, 3.0]) * (r + 1)
            loss = (params[r % 2] * x).sum()
            accumulator.add({{"loss": loss}}, 1, world)
    a, b, c = accumulator.take()
    saved["layout/a"], saved["layout/b"] = a, b if b is not None else torch.full((3,), -1.0)
    saved["layout/c_is_none"] = torch.tensor([c is None])
    save_file(saved, f"{{out}}/rank{{rank}}.safetensors")
    """
)


def test_empty_last_share_and_unrouted_experts_train_like_one_process(tmp_path: Path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    for name in ("two", "one"):
        (tmp_path / name).mkdir()
    two = subprocess.run([*TORCHRUN, str(script), str(tmp_path / "two")], env=ENV, capture_output=True, text=True, check=False,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=ENV, capture_output=True,
                         text=True, timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    rank0, rank1 = (load_file(str(tmp_path / "two" / f"rank{r}.safetensors")) for r in (0, 1))
    single = load_file(str(tmp_path / "one" / "rank0.safetensors"))
    trained = [k for k in single if not k.startswith("layout/")]
    assert {k.split("/")[0] for k in trained} == {"vpt-shallow", "mocoop"}
    for name in trained:
        assert torch.equal(rank0[name], rank1[name]), name  # the ranks applied the same reduced gradient
        # MoCoOp's text loss is a mean over the experts the batch routes to: a half batch routes to fewer, so
        # data-parallel MoCoOp is another function of the batch (as DDP runs of the reference code are); measured
        # 2.8e-6 off. Every other loss here is a per-example mean: measured 7.5e-9 off.
        tolerance = {"rtol": 1e-4, "atol": 1e-5} if name.startswith("mocoop/") else {"rtol": 1e-5, "atol": 1e-7}
        torch.testing.assert_close(rank0[name], single[name], **tolerance, msg=name)
    # Fixed layout: (1*x + 0) / 2 for a, (0 + 2*x) / 2 for b, and c stays without a gradient (no weight decay).
    for rank in (rank0, rank1):
        assert torch.equal(rank["layout/a"], torch.tensor([0.5, 1.0, 1.5]))
        assert torch.equal(rank["layout/b"], torch.tensor([1.0, 2.0, 3.0]))
        assert bool(rank["layout/c_is_none"])


def cli_args(out: Path, lr: float, batch: int) -> list[str]:
    return ["train", "--out", str(out), "method=coop", "backbone=tiny:open_clip", "dataset=world-object",
            "shots=1", "seed=1", "dataset_options.train_per_class=4", "dataset_options.val_per_class=1",
            "dataset_options.test_per_class=1", "train.epochs=2", f"train.batch_size={batch}", f"train.lr={lr}",
            "train.progress=false", "train.log_every=1", "train.num_workers=0", "train.checkpoint_every=1"]


def test_torchrun_cli_restart_discards_the_old_progress_on_every_rank(tmp_path: Path, monkeypatch):
    """An interrupted run (its resume state on disk) rerun under torchrun with --restart and another lr: rank 0
    alone clears the folder before any rank reads it, so no rank resumes the old state (the start-of-fit checksum
    would refuse ranks that disagree), and the result is the one of a fresh run."""
    from vlprompt.artifacts.run_dir import RunDir
    from vlprompt.cli import main
    from vlprompt.train import trainer as trainer_module

    out = tmp_path / "run"
    original = trainer_module.Trainer._optimizer_step

    def stop_after_two(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.step == 2:
            os.kill(os.getpid(), 15)  # SIGTERM: the loop saves the resume state of step 2 and stops

    monkeypatch.setattr(trainer_module.Trainer, "_optimizer_step", stop_after_two)
    assert main(cli_args(out, lr=0.5, batch=4)) == 143  # stopped on SIGTERM, resume state saved
    monkeypatch.undo()
    assert RunDir(out).resume.exists() and not RunDir(out).is_finished()

    done = subprocess.run([*TORCHRUN, "-m", "vlprompt.cli", *cli_args(out, lr=0.02, batch=2), "--restart"], env=ENV,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(cli_args(tmp_path / "fresh", lr=0.02, batch=4)) == 0
    steps = [json.loads(line)["step"] for line in RunDir(out).metrics.read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps[0] == 1  # started afresh, not from step 2
    two, one = load_file(str(RunDir(out).prompts)), load_file(str(RunDir(tmp_path / "fresh").prompts))
    assert two.keys() == one.keys()
    for name in one:  # 12 CoOp steps from the same start: rounding of the two-part sums compounds a little
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6)
    # Rank 0 refuses (a finished run of another config); rank 1 hears it and stops too instead of waiting forever.
    refused = subprocess.run([*TORCHRUN, "-m", "vlprompt.cli", *cli_args(out, lr=0.03, batch=2)], env=ENV,
                             capture_output=True, text=True, timeout=300, check=False)
    assert refused.returncode != 0
    assert "holds a finished run of another config" in refused.stderr
    assert "Rank 0 stopped before training, so this rank stops too" in refused.stderr
