"""Tip-Adapter, Tip-Adapter-F and CLAP on the feature cache: how long a fit takes once the features exist.

Each method runs its official preset (src/vlprompt/presets/<method>-paper.yaml, train block as written: CLAP's
6,000 epochs included) on the demo task (world-paint, world CLIP, 16 shots, seed 1) twice with one feature-cache
folder: the cold run encodes the K augmented training views and the validation split, the warm run reads them
from disk, so its time is the method's own cost (cache model, α/β search, training on features). Zero-shot and
CoOp (its own defaults, 15 epochs) are listed for scale. One thread; the machine is shared, so times vary.

    python benchmarks/bench_cache_adapters.py    # -> results/cache_adapters.{json,md}
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

from vlprompt.backbones.registry import create_backbone
from vlprompt.core.seeding import seed_everything
from vlprompt.data.fewshot import few_shot_task
from vlprompt.data.registry import load_dataset
from vlprompt.demo import world_defaults
from vlprompt.eval.tasks import evaluate
from vlprompt.methods import METHODS, create_method, import_all
from vlprompt.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent
PRESETS = ROOT.parent / "src" / "vlprompt" / "presets"
METHOD_NAMES = ("zeroshot", "coop", "tip-adapter", "tip-adapter-f", "clap")


def preset(name: str) -> tuple[dict, dict]:
    path = PRESETS / f"{name}-paper.yaml"
    if not path.exists():
        return {}, {"epochs": 15}
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    return values["method_options"], values["train"]


def run(name: str, task, backbone, cache_dir: str) -> dict:
    options, train = preset(name)
    config = TrainConfig(**{**METHODS.get(name).train_defaults, **train, "seed": 1, "device": "cpu",
                            "progress": False, "cache_dir": cache_dir})
    times = []
    for _ in range(2):  # cold (encodes the views), then warm (reads them)
        seed_everything(1)
        method = create_method(name, backbone, task.labels, **options)
        started = time.perf_counter()
        fit = Trainer(method, config).fit(task)
        times.append(time.perf_counter() - started)
    accuracy = evaluate(method, task.test, batch_size=256, cache_dir=cache_dir)
    return {"method": name, "epochs": config.epochs, "steps": fit.steps, "feature_views": config.feature_views,
            "cold_seconds": round(times[0], 2), "warm_seconds": round(times[1], 2),
            "val_accuracy": fit.val_accuracy, "test_accuracy": round(100 * accuracy, 2)}


def main() -> None:
    torch.set_num_threads(1)
    import_all()
    defaults = world_defaults()
    backbone = create_backbone(defaults["backbone"])
    task = few_shot_task(load_dataset(defaults["dataset"], **defaults.get("options", {})), shots=16, seed=1)
    with tempfile.TemporaryDirectory() as cache_dir:
        rows = [run(name, task, backbone, cache_dir) for name in METHOD_NAMES]
    load = round(os.getloadavg()[1], 1)  # a shared machine's load explains most of the spread in these times
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    record = {"task": defaults["dataset"], "backbone": defaults["backbone"], "shots": 16, "seed": 1,
              "torch": torch.__version__, "python": platform.python_version(), "load_average_5min": load, "rows": rows}
    (out / "cache_adapters.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    lines = ["| method | epochs | steps | views | cold fit (s) | warm fit (s) | test acc |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['epochs']} | {r['steps']} | {r['feature_views']} | {r['cold_seconds']} | "
              f"{r['warm_seconds']} | {r['test_accuracy']} |" for r in rows]
    text = (f"# Cache methods on the feature cache\n\n`{defaults['dataset']}` on `{defaults['backbone']}`, 16 shots, "
            "seed 1, official presets; cold = encodes the K views, warm = features read from the cache folder "
            f"(5-minute load average at the end: {load}).\n\n"
            + "\n".join(lines) + "\n")
    (out / "cache_adapters.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
