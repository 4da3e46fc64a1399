"""Training-step time of the baselines (IVLP, MaPLe, PromptSRC, CLIP-LoRA, Tip-Adapter-F, CLAP) against CoOp.

One optimizer step (forward, gradients, SGD update) per method, the methods taking turns within each round so
that load from other processes hits all of them alike (``bench_text_speed.interleaved``; round 0 warms up and
fills derived caches such as PromptSRC's template features). Ratios are the median over rounds of the per-round
ratio to CoOp's step on cached image features (CoOp as the library trains it), and to CoOp running the frozen
image tower every step (as the reference code does), since IVLP, MaPLe, PromptSRC and CLIP-LoRA cannot cache
image features. Tip-Adapter-F and CLAP step on cached features; Tip-Adapter has no training step. Same batch
for every method. Models: the world CLIP (24 classes) and a ViT-B/16-shaped random-init open_clip CLIP at
224 px (4 classes). Peak memory is measured only for the one case the issue bounds: a training step with
1,000 classes on the world CLIP, one text-encoder call against class chunks (recomputed in backward), each
variant in a fresh process (peak RSS above the built model; tracemalloc does not see torch's allocator).

    python benchmarks/bench_baselines_speed.py [--rounds 10] [--b16-rounds 3] [--batch 8] [--many-classes 1000]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_text_speed import (
    B16_CLASSES,
    _status_kib,
    interleaved,
    medians,
    paired_ratio,
    train_step,
    world_backbone,
)

from vlprompt.data.base import LabelSpace
from vlprompt.methods import create_method, import_all

METHODS = ("coop", "coop-images", "ivlp", "maple", "promptsrc", "clip-lora", "tip-adapter-f", "clap")
SHOTS = 16  # Tip-Adapter-F's cache holds shots x classes keys


def build(name: str, backbone, labels: LabelSpace) -> torch.nn.Module:
    """Each method with its own defaults (the base-to-new settings); CoOp with 16 context tokens."""
    if name in ("coop", "coop-images"):
        return create_method("coop", backbone, labels, n_ctx=16)
    method = create_method(name, backbone, labels)
    if name == "tip-adapter-f":
        generator = torch.Generator().manual_seed(1)
        keys = torch.randn(SHOTS * labels.num_classes, backbone.visual.feature_dim, generator=generator)
        method.set_cache(keys, torch.arange(labels.num_classes).repeat(SHOTS))
    return method


def batches(backbone, classes: int, batch: int) -> tuple[dict, dict]:
    """(a batch of images, the same batch as frozen image features)."""
    generator = torch.Generator().manual_seed(0)
    size = backbone.preprocess.image_size
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(classes, (batch,), generator=generator)
    with torch.no_grad():
        features = backbone.visual(images)
    return {"image": images, "label": labels}, {"features": features, "label": labels}


def measure(backbone, labels: LabelSpace, batch: int, rounds: int) -> dict:
    image_batch, feature_batch = batches(backbone, labels.num_classes, batch)
    steps: dict[str, Callable[[], None]] = {}
    for name in METHODS:
        torch.manual_seed(0)
        method = build(name, backbone, labels).train()
        uses_features = name != "coop-images" and getattr(method, "uses_image_features", False)
        steps[name] = train_step(method, feature_batch if uses_features else image_batch)
    started = time.perf_counter()
    times = interleaved(steps, rounds)
    return {
        "classes": labels.num_classes, "batch": batch, "rounds": rounds, "seconds": time.perf_counter() - started,
        "step_seconds": medians(times),
        "ratio_to_coop": {name: paired_ratio(times, name, "coop") for name in METHODS},
        "ratio_to_coop_images": {name: paired_ratio(times, name, "coop-images") for name in METHODS},
    }


def _memory_child(method: str, options: dict, classes: int, batch: int, queue) -> None:
    torch.set_num_threads(1)
    import_all()
    world, _ = world_backbone()
    labels = LabelSpace([f"thing {i}" for i in range(classes)], ["a photo of a {}."])
    model = create_method(method, world, labels, **options).train()
    size = world.preprocess.image_size
    data = {"image": torch.randn(batch, 3, size, size), "label": torch.randint(classes, (batch,))}
    if hasattr(model, "teacher_text_features"):
        model.teacher_text_features()  # derived once per label space, not part of a step
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS mark to the current RSS
    started = time.perf_counter()
    torch.autograd.grad(model(data)["loss"], model.trainable_parameters(), allow_unused=True)
    seconds = time.perf_counter() - started
    queue.put({"step_mib": max(_status_kib("VmHWM") - before, 0) / 1024, "step_seconds": seconds})


def memory_many_classes(classes: int, batch: int) -> dict:
    """Peak memory of one training step with many classes, one text-encoder call against chunks of 128."""
    import multiprocessing

    variants = {}
    for method, extra in (("coop", {"n_ctx": 16}), ("maple", {}), ("promptsrc", {"templates": "task"})):
        variants[f"{method}, one call"] = (method, {**extra, "class_chunk": classes})
        variants[f"{method}, chunks of 128"] = (method, {**extra, "class_chunk": 128})
    context = multiprocessing.get_context("spawn")
    results = {}
    for name, (method, options) in variants.items():
        queue = context.Queue()
        process = context.Process(target=_memory_child, args=(method, options, classes, batch, queue))
        process.start()
        results[name] = queue.get()
        process.join()
        print("memory", name, results[name], flush=True)
    return {"classes": classes, "batch": batch, "variants": results}


def render(results: dict) -> str:
    lines = [
        f"# Training step of the baselines against CoOp (CPU, {results['threads']} thread, torch {results['torch']})",
        "",
        (f"World CLIP: `{results['world_backbone']}`; ViT-B/16: random-init open_clip ViT-B-16 at 224 px. Batch "
         f"{results['batch']} for every method, median over rounds of the per-round ratio (methods interleaved). "
         "`coop` steps on cached image features (how the library trains it); `coop-images` runs the frozen image "
         "tower every step (the reference code's way, and the fair base for methods whose image tower holds "
         "prompts or LoRA). Tip-Adapter has no training step. Generated by "
         "`benchmarks/bench_baselines_speed.py`."),
        "",
        ("| method | world step ms | world / coop | world / coop-images | ViT-B/16 step ms | ViT-B/16 / coop | "
         "ViT-B/16 / coop-images |"),
        "|---|---|---|---|---|---|---|",
    ]
    for name in METHODS:
        cells = []
        for key in ("world", "b16"):
            entry = results.get(key)
            if entry is None:
                cells += ["—"] * 3
                continue
            cells += [f"{1000 * entry['step_seconds'][name]:.1f}", f"{entry['ratio_to_coop'][name]:.2f}",
                      f"{entry['ratio_to_coop_images'][name]:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key, model in (("world", "world"), ("b16", "ViT-B/16")):
        if key in results:
            entry = results[key]
            lines.append("")
            lines.append(f"{model}: {entry['classes']} classes, {entry['rounds']} timed rounds, {entry['seconds']:.0f} s.")
    memory = results.get("memory")
    if memory:
        lines += ["", (f"One training step with {memory['classes']} classes on the world CLIP (batch {memory['batch']} "
                       "images; PromptSRC's teacher from the task's one template, built before the step), each variant "
                       "in a fresh process:"), "", "| variant | peak memory above built (MiB) | step s |", "|---|---|---|"]
        for name, entry in memory["variants"].items():
            lines.append(f"| {name} | {entry['step_mib']:.0f} | {entry['step_seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds on the world CLIP")
    parser.add_argument("--b16-rounds", type=int, default=3, help="timed rounds on the ViT-B/16-shaped CLIP")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", default="world,b16")
    parser.add_argument("--many-classes", type=int, default=1000, help="class count of the memory step (0: skip)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import_all()
    from vlprompt.backbones.tiny import clip_b16_shaped
    from vlprompt.core.io import atomic_write_json, atomic_write_text
    from vlprompt.data.world.tasks import get_world_task

    world, trained = world_backbone()
    started = time.perf_counter()
    results: dict = {"threads": args.threads, "torch": torch.__version__, "batch": args.batch,
                     "machine": platform.processor() or platform.machine(), "world_backbone": world.backbone_id,
                     "world_weights_trained": trained}
    world_labels = get_world_task("object").label_space()
    previous = Path(args.out) / "baselines_speed.json"
    if previous.exists():  # keep the parts not measured this time (each part's ratios come from one run)
        earlier = json.loads(previous.read_text())
        results.update({k: earlier[k] for k in ("world", "b16", "memory") if k in earlier})
    if "world" in args.models:
        results["world"] = measure(world, world_labels, args.batch, args.rounds)
        print("world", json.dumps(results["world"]), flush=True)
    if "b16" in args.models:
        b16_labels = LabelSpace(B16_CLASSES, ["a photo of a {}."], dict(world_labels.template_groups))
        results["b16"] = measure(clip_b16_shaped(seed=0), b16_labels, args.batch, args.b16_rounds)
        print("b16", json.dumps(results["b16"]), flush=True)
    if args.many_classes:
        results["memory"] = memory_many_classes(args.many_classes, args.batch)
    results["total_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    atomic_write_json(out / "baselines_speed.json", results)
    atomic_write_text(out / "baselines_speed.md", render(results))
    print((out / "baselines_speed.md").read_text())


if __name__ == "__main__":
    main()
