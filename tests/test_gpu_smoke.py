"""scripts/gpu_smoke.sh: refuses to pretend without a GPU; its --cpu dry run runs the same steps on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent.parent / "scripts" / "gpu_smoke.sh"


def run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False,
                          cwd=Path(__file__).parent.parent)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the real smoke test applies")
def test_without_a_gpu_the_script_says_so_and_writes_nothing(tmp_path):
    result = run("--out", str(tmp_path / "smoke.json"), timeout=120)
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr and "--cpu" in result.stderr
    assert not (tmp_path / "smoke.json").exists()


@pytest.mark.slow
def test_cpu_dry_run_passes_every_step(tmp_path):
    out = tmp_path / "smoke.json"
    result = run("--cpu", "--out", str(out), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["all_passed"]
    assert [s["step"] for s in report["steps"]] == ["coop-bf16", "vpt-deep-bf16", "torchrun-2"]
    assert all(s["status"] == "passed" for s in report["steps"])
