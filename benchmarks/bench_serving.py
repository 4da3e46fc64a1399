"""Multi-task serving: N tasks in one mixed batch against N separate passes, plus the cost of weights hashing.

A batch of B preprocessed images, image i naming task i mod N. "Separate" runs each task's own method on the
images that name it (N passes, as a server without shared batching would); "mixed" is one
``MultiTaskPredictor.logits`` call on the whole batch; "single" is one task's own pass over all B images (the
cost floor for text-prompt tasks, which share one image-tower pass). Times: interleaved rounds after a warm-up
(the variants take turns, so load from other processes hits them alike); ratios use the fastest round of each
variant (the least disturbed on a shared machine), medians are recorded too. Task sets: text heads
(CoOp, KgCoOp, zero-shot, linear), visual prompts (VPT/SPT shallow and deep, 10 tokens each) and a mix.
Prompts are random: speed does not depend on what was learned.

Backbones: the shipped world CLIP, and a random-init open_clip ViT-B/16 at 224 px on a small batch.
Also timed: ``Backbone.weights_hash()`` (sha256 over the state dict, once per backbone object).

    python benchmarks/bench_serving.py [--rounds 5] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

TARGETS = {"mixed_vs_separate": 1.0, "text_mixed_vs_single": 1.3}
SIZES = {"world-clip": 128, "clip-b16-224": 16}  # name -> batch size
TASK_SETS = {
    "text": [("coop", {"n_ctx": 16}), ("kgcoop", {"n_ctx": 4}), ("zeroshot", {}), ("linear", {})],
    "visual": [("vpt-shallow", {"num_tokens": 10}), ("vpt-deep", {"num_tokens": 10}),
               ("spt-shallow", {"num_tokens": 10}), ("vpt-deep", {"num_tokens": 10})],
    "mixed": [("vpt-deep", {"num_tokens": 10}), ("vpt-shallow", {"num_tokens": 10}), ("coop", {"n_ctx": 16}),
              ("linear", {})],
}
WORLD_TASKS = ("world-object", "world-paint", "world-texture", "world-style")  # a label space per task


def build_backbone(size: str):
    if size == "clip-b16-224":
        from vlprompt.backbones.tiny import clip_b16_shaped

        return clip_b16_shaped(seed=0)
    from vlprompt.backbones.registry import create_backbone

    return create_backbone("world:clip")


def build_tasks(backbone, task_set: str) -> dict:
    from vlprompt.data.registry import load_dataset
    from vlprompt.methods import create_method

    methods = {}
    generator = torch.Generator().manual_seed(0)
    for index, (name, options) in enumerate(TASK_SETS[task_set]):
        labels = load_dataset(WORLD_TASKS[index]).labels
        method = create_method(name, backbone, labels, **options).eval()
        with torch.no_grad():
            for parameter in method.trainable_parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        methods[f"{index}:{name}"] = method
    return methods


def make_images(backbone, count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    size = backbone.preprocess.image_size
    return torch.randn(count, 3, size, size, generator=generator)


def timed_rounds(variants: dict[str, Callable[[], None]], rounds: int) -> dict[str, dict[str, float]]:
    for run in variants.values():  # warm-up: caches (class features), allocator
        run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - started)
    return {name: {"median": statistics.median(values), "min": min(values)} for name, values in samples.items()}


@torch.no_grad()
def measure_task_set(backbone, images: torch.Tensor, task_set: str, rounds: int) -> dict:
    from vlprompt.serve.serving import MultiTaskPredictor

    batch = images.shape[0]
    methods = build_tasks(backbone, task_set)
    names = list(methods)
    tasks = [names[i % len(names)] for i in range(batch)]
    rows = {name: [i for i, t in enumerate(tasks) if t == name] for name in names}
    predictor = MultiTaskPredictor(methods)
    first = methods[names[0]]

    def separate() -> None:
        for name, method in methods.items():
            method.predict({"image": images[rows[name]]})

    times = timed_rounds({
        "mixed": lambda: predictor.logits(images, tasks),
        "separate": separate,
        "single": lambda: first.predict({"image": images}),
    }, rounds)
    best = {k: v["min"] for k, v in times.items()}
    return {
        "tasks": names,
        "seconds": {k: round(v, 5) for k, v in best.items()},
        "median_seconds": {k: round(v["median"], 5) for k, v in times.items()},
        "images_per_second": {k: round(batch / v, 1) for k, v in best.items()},
        "mixed_vs_separate": round(best["mixed"] / best["separate"], 3),
        "mixed_vs_single": round(best["mixed"] / best["single"], 3),
        "median_mixed_vs_separate": round(times["mixed"]["median"] / times["separate"]["median"], 3),
    }


def measure(size: str, rounds: int) -> dict:
    backbone = build_backbone(size)
    images = make_images(backbone, SIZES[size])
    entry = {"batch_size": SIZES[size], "task_sets": {}}
    for task_set in TASK_SETS:
        entry["task_sets"][task_set] = measure_task_set(backbone, images, task_set, rounds)
        print(size, task_set, entry["task_sets"][task_set]["seconds"], flush=True)
    return entry


def measure_hash() -> dict:
    from vlprompt.backbones import tiny
    from vlprompt.backbones.registry import create_backbone

    builders = {
        "world:clip": lambda: create_backbone("world:clip"),
        "world:mae": lambda: create_backbone("world:mae"),
        "timm ViT-B/16 (random init)": lambda: tiny.vit_b16_shaped(seed=0),
        "open_clip ViT-B-16 (random init)": lambda: tiny.clip_b16_shaped(seed=0),
    }
    out = {}
    for name, build in builders.items():
        backbone = build()
        backbone.extra.pop("_weights_hash", None)
        size = sum(t.numel() * t.element_size() for m in backbone.modules() for t in m.state_dict().values())
        started = time.perf_counter()
        backbone.weights_hash()
        first = time.perf_counter() - started
        started = time.perf_counter()
        backbone.weights_hash()
        out[name] = {"megabytes": round(size / 2**20, 1), "first_call_s": round(first, 3),
                     "cached_call_s": round(time.perf_counter() - started, 6)}
        print("hash", name, out[name], flush=True)
    return out


def render_markdown(results: dict) -> str:
    lines = [
        "# Multi-task serving (bench_serving.py)",
        "",
        (f"N = 4 tasks per batch, image i names task i mod 4; {results['threads']} CPU thread(s), "
         f"{results['rounds']} rounds (ViT-B/16: 2), fastest round of each. mixed = one MultiTaskPredictor call; "
         "separate = each task's own pass over its images; single = one task's pass over all images."),
        "",
        "| backbone | batch | tasks | mixed s | separate s | single s | mixed / separate | mixed / single |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for size, entry in results["sizes"].items():
        for task_set, row in entry["task_sets"].items():
            s = row["seconds"]
            lines.append(f"| {size} | {entry['batch_size']} | {task_set} | {s['mixed']:.4f} | {s['separate']:.4f} | "
                         f"{s['single']:.4f} | {row['mixed_vs_separate']:.2f} | {row['mixed_vs_single']:.2f} |")
    if "clip-b16-224" not in results["sizes"]:
        lines += ["", "ViT-B/16 serving not measured in this run (CPU only here; `--sizes clip-b16-224` adds it)."]
    target = (f"Targets: mixed / separate ≤ {TARGETS['mixed_vs_separate']}; for text tasks mixed / single ≤ "
              f"{TARGETS['text_mixed_vs_single']}.")
    lines += ["", target, "", "## Backbone weights hash (sha256 of the state dict)", "",
              "| backbone | MB | first call s | cached call s |", "|---|---:|---:|---:|"]
    for name, row in results["weights_hash"].items():
        lines.append(f"| {name} | {row['megabytes']} | {row['first_call_s']} | {row['cached_call_s']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "threads": args.threads,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "targets": TARGETS,
        "sizes": {size: measure(size, args.rounds if size == "world-clip" else 2) for size in args.sizes.split(",")},
        "weights_hash": measure_hash(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "serving.md").write_text(render_markdown(results))
    print((out / "serving.md").read_text())


if __name__ == "__main__":
    main()
