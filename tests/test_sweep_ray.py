"""The Ray launcher on a local Ray cluster started here: an interrupted sweep resumed by Ray gives the same
results.json as the local launcher; finished runs are skipped; a failing run writes its error.txt."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file
from test_sweep import _config, _results, plugin, plugin_dir  # noqa: F401  (fixtures)

from vlprompt.artifacts.run_dir import RunDir
from vlprompt.sweep import RUNS_DIR, RayLauncher, run_sweep

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster(plugin_dir):  # noqa: F811
    """Two CPUs; workers inherit PYTHONPATH (this checkout's sources and the test plugin)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_dir), old]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = old


def test_ray_sweep_resumes_an_interrupted_sweep_to_the_local_results(plugin, ray_cluster, tmp_path,  # noqa: F811
                                                                      monkeypatch):
    from vlprompt.train import trainer as trainer_module

    config = _config(seeds=[1, 2], datasets=["sweeptest:colours", "sweeptest:broken"],
                     train={"epochs": 3, "batch_size": 8, "lr": 0.05, "progress": False, "device": "cpu",
                            "eval_batch_size": 64})
    local = run_sweep(config, tmp_path / "local")
    original = trainer_module.Trainer._save_resume

    def interrupt(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "_save_resume", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path / "ray")
    monkeypatch.setattr(trainer_module.Trainer, "_save_resume", original)
    interrupted = [p.parent for p in (tmp_path / "ray" / RUNS_DIR).glob("*/resume.safetensors")]
    assert len(interrupted) == 1

    resumed = run_sweep(config, tmp_path / "ray", launcher=RayLauncher())
    assert sorted(resumed["ran"]) == sorted(local["ran"]) and len(local["ran"]) == 2
    assert resumed["launcher"] == "ray" and len(resumed["failed"]) == 2  # the broken dataset, both seeds
    assert "broken on purpose" in RunDir(tmp_path / "ray" / RUNS_DIR / resumed["failed"][0]["run"]).error.read_text()
    a, b = _results(tmp_path / "local"), _results(tmp_path / "ray")
    assert {k: [r["accuracy"] for r in v] for k, v in a.items()} == {k: [r["accuracy"] for r in v] for k, v in b.items()}
    for name in local["ran"]:
        ref = load_file(tmp_path / "local" / RUNS_DIR / name / "prompts.safetensors")
        got = load_file(tmp_path / "ray" / RUNS_DIR / name / "prompts.safetensors")
        assert all(torch.allclose(ref[k], got[k], atol=1e-6) for k in ref)
    again = run_sweep(config, tmp_path / "ray", launcher=RayLauncher())
    assert sorted(again["finished_before"]) == sorted(local["ran"]) and again["ran"] == []
