"""Two torchrun processes (gloo, CPU) match one process: training with the same global batch (VPT, and ProGrad
whose projection must see the full batch's gradients), and the feature cache encoded in shards."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_trainer import make_task
    from vlprompt.backbones.tiny import tiny_timm_vit
    from vlprompt.methods import create_method
    from vlprompt.core.seeding import seed_everything
    from vlprompt.core import distributed
    from vlprompt.train import TrainConfig, Trainer

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
    for name in one:  # not bit-identical: two partial sums per step instead of one (README, "bit-identical")
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-7)
    # Only rank 0 wrote: one metrics file whose losses are the mean over ranks.
    lines_two = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    lines_one = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    assert len(lines_two) == len(lines_one)


CACHE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    from safetensors.torch import save_file
    from torchvision import transforms as T
    from test_features import KEY, CountingEncoder, make_dataset
    from vlprompt.core import distributed
    from vlprompt.data.features import encode_dataset

    distributed.init_from_env()
    out, workers = sys.argv[1], int(sys.argv[2])
    augment = T.Compose([T.RandomResizedCrop(8, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])
    dataset = make_dataset(n=11)
    encoder = CountingEncoder()
    result = {{
        "exact": encode_dataset(encoder, dataset, batch_size=3, num_workers=workers),
        "views": encode_dataset(encoder, dataset, batch_size=3, views=3, augment=augment, seed=4,
                                num_workers=workers, cache_dir=out + "/cache", cache_key=KEY),
        # one batch for two ranks: rank 1 encodes nothing and still receives everything
        "one_batch": encode_dataset(encoder, make_dataset(n=2), batch_size=3, num_workers=workers),
    }}
    calls = encoder.calls
    cached = encode_dataset(encoder, dataset, batch_size=3, views=3, augment=augment, seed=4,
                            num_workers=workers, cache_dir=out + "/cache", cache_key=KEY)
    assert encoder.calls == calls and torch.equal(cached, result["views"])  # every rank read the cache
    result["calls"] = torch.tensor([calls])
    save_file(result, f"{{out}}/rank{{distributed.rank()}}.safetensors")
    """
)


def test_sharded_cache_encoding_equals_single_process_bit_for_bit(tmp_path: Path):
    script = tmp_path / "encode.py"
    script.write_text(CACHE_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    subprocess.run([*torchrun, str(script), str(tmp_path / "two"), "1"], env=env, check=True, timeout=300)
    subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "0"], env=env, check=True, timeout=300)
    one = load_file(str(tmp_path / "one" / "rank0.safetensors"))
    ranks = [load_file(str(tmp_path / "two" / f"rank{r}.safetensors")) for r in (0, 1)]
    for name in ("exact", "views", "one_batch"):
        for rank in ranks:
            assert torch.equal(rank[name], one[name]), name
    # 4 batches x (1 exact + 3 views) + 1 small batch in one process; the two ranks split that work.
    assert int(one["calls"]) == 17
    assert int(ranks[0]["calls"]) + int(ranks[1]["calls"]) == 17 and int(ranks[1]["calls"]) == 8
    assert len(list((tmp_path / "two" / "cache").glob("*.safetensors"))) == 1  # written once, by rank 0


PROGRAD_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    from safetensors.torch import save_file
    from test_grad_parts import fit_prograd
    from vlprompt.core import distributed
    from vlprompt.backbones.tiny import tiny_open_clip

    distributed.init_from_env()
    ctx = fit_prograd(tiny_open_clip(seed=0), batch_size=8 // distributed.world_size())
    if distributed.is_main_process():
        save_file({{"ctx": ctx}}, sys.argv[1])
    """
)


@pytest.mark.slow
def test_prograd_on_two_processes_projects_the_reduced_gradients(tmp_path: Path):
    """Like grad_accum (tests/test_grad_parts.py, fast, where projecting each part on its own visibly
    differs), the ranks' G_d and G_g are reduced first and projected once."""
    script = tmp_path / "prograd.py"
    script.write_text(PROGRAD_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    subprocess.run([*torchrun, str(script), str(tmp_path / "two.safetensors")], env=env, check=True, timeout=300)
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.safetensors")], env=env, check=True,
                   timeout=300)
    two = load_file(str(tmp_path / "two.safetensors"))["ctx"]
    one = load_file(str(tmp_path / "one.safetensors"))["ctx"]
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-6)
