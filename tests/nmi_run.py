"""The tiny run whose metrics.jsonl was captured before NMI logging moved from VPT/SPT into a callback
(tests/data/nmi_before_spt_deep.jsonl, written by ``python tests/nmi_run.py`` at commit 7dfb7df)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from vlprompt.experiment import RunConfig, run_experiment

GOLDEN = Path(__file__).parent / "data" / "nmi_before_spt_deep.jsonl"


def tiny_nmi_run(out: Path) -> list[dict]:
    """SPT-deep on a 3-class world task, 2 epochs of 2 steps, NMI every step through the user-facing
    run-level ``nmi`` section; returns metrics.jsonl's records."""
    config = RunConfig(
        method="spt-deep", backbone="tiny:timm_vit", dataset="world-size", shots=2, seed=1,
        dataset_options={"train_per_class": 2, "val_per_class": 1, "test_per_class": 1},
        method_options={"num_tokens": 2, "init_batch_size": 4},
        nmi={"every": 1, "images": 3, "normalization": "sqrt"},
        train={"epochs": 2, "batch_size": 4, "log_every": 1, "progress": False, "device": "cpu",
               "num_workers": 0},
        out=str(out),
    )
    run_experiment(config)
    lines = (Path(out) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


if __name__ == "__main__":
    tiny_nmi_run(Path(sys.argv[1]))
    GOLDEN.write_bytes((Path(sys.argv[1]) / "metrics.jsonl").read_bytes())
