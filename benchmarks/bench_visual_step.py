"""Step cost of VPT-deep and of the parameter-efficient methods against full fine-tuning, on the same ViT and batch.

VPT-deep is also compared with the floor; BitFit (``bias``), the Pfeiffer ``adapter``, ``lora`` (q, v) and ``ssf``
must step within 1.1x of full fine-tuning's time and below its memory (issue 17 item 8).

The floor is the least work any visual-prompt step must do: the frozen forward with prompts, written by hand on
the raw timm model (no adapter, no method, no head training, no optimizer), and a backward to the prompts only.
Step time: median over interleaved rounds (the three variants take turns, so load from other processes hits
them alike). Peak memory: each variant in its own fresh process; the figure is the rise of the resident set
during two training steps above the resident set after everything was built (so the fine-tuning method's
private copy of the tower does not count against it, while its gradients and optimizer state do).

Sizes: the world ViT (the MAE world backbone's architecture: 32 px, patch 4, width 128, 6 blocks) and a
ViT-B/16-shaped random-init model at 224 px on a small batch.

    python benchmarks/bench_visual_step.py [--rounds 4] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

PEFT = ("bias", "adapter", "lora", "ssf")
TARGETS = {"vpt_vs_finetune_time": 0.75, "vpt_vs_floor_time": 1.15, "vpt_vs_finetune_memory": 1.0}
for _name in PEFT:
    TARGETS[f"{_name}_vs_finetune_time"] = 1.1
    TARGETS[f"{_name}_vs_finetune_memory"] = 1.0
SIZES = {"world-vit": 32, "vit-b16-224": 4}  # name -> batch size
ROUNDS = {"world-vit": 25, "vit-b16-224": 4}  # timed rounds (after one warm-up round)
NUM_PROMPTS = 10
NUM_CLASSES = 10
VARIANTS = ("vpt-deep", "finetune", "floor", *PEFT)


def build_backbone(size: str):
    if size == "vit-b16-224":
        from vlprompt.backbones.tiny import vit_b16_shaped

        return vit_b16_shaped(seed=0)
    from vlprompt.backbones.timm_vit import wrap_timm_vit
    from vlprompt.backbones.world import build_world_mae

    torch.manual_seed(0)
    return wrap_timm_vit(build_world_mae().eval(), "random:world-mae-shaped", kind="mae")


def make_step(variant: str, backbone, batch: dict) -> Callable[[], None]:
    """One training step of ``variant`` on ``batch``, ready to time."""
    from vlprompt.data.base import LabelSpace
    from vlprompt.methods.base import create_method

    labels = LabelSpace([f"c{i}" for i in range(NUM_CLASSES)])
    if variant == "floor":
        return _floor_step(backbone, batch)
    options = {"num_tokens": NUM_PROMPTS} if variant == "vpt-deep" else {}
    method = create_method(variant, backbone, labels, **options).train()
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        loss = method(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _floor_step(backbone, batch: dict) -> Callable[[], None]:
    model = backbone.visual.model  # the raw timm VisionTransformer
    depth, width = len(model.blocks), model.embed_dim
    prompts = torch.nn.Parameter(torch.zeros(depth, NUM_PROMPTS, width).uniform_(-0.05, 0.05))
    head = torch.randn(width, NUM_CLASSES) * 0.02
    images, labels = batch["image"], batch["label"]
    prefix, mean_pool = model.num_prefix_tokens, model.global_pool == "avg"

    def step() -> None:
        x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
        b = x.shape[0]
        x = torch.cat([x[:, :prefix], prompts[0].expand(b, -1, -1), x[:, prefix:]], dim=1)
        for i, block in enumerate(model.blocks):
            if i:
                x = torch.cat(
                    [x[:, :prefix], prompts[i].expand(b, -1, -1), x[:, prefix + NUM_PROMPTS :]], dim=1
                )
            x = block(x)
        x = model.norm(x)
        pooled = x[:, prefix:].mean(1) if mean_pool else x[:, 0]
        loss = torch.nn.functional.cross_entropy(pooled @ head, labels)
        torch.autograd.grad(loss, [prompts])

    return step


def make_batch(backbone, batch_size: int) -> dict:
    size = backbone.preprocess.image_size
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(batch_size, 3, size, size, generator=generator),
        "label": torch.randint(NUM_CLASSES, (batch_size,), generator=generator),
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_child(size: str, variant: str, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    backbone = build_backbone(size)
    batch = make_batch(backbone, SIZES[size])
    step = make_step(variant, backbone, batch)
    before = _status_kib("VmRSS")
    # Linux: writing 5 to clear_refs resets the peak-RSS mark (VmHWM), so the peak below is the steps' own
    # (ru_maxrss cannot be used: a spawned child inherits its parent's high-water mark across exec).
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(2):
        step()
    peak = _status_kib("VmHWM")
    queue.put({"built_mib": before / 1024, "peak_mib": peak / 1024, "step_mib": max(peak - before, 0) / 1024})


def measure_memory(size: str, variant: str, threads: int) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_memory_child, args=(size, variant, threads, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def measure_time(size: str, rounds: int) -> dict[str, dict]:
    """Median step time per variant; the variants take turns within each round."""
    backbone = build_backbone(size)
    batch = make_batch(backbone, SIZES[size])
    steps = {variant: make_step(variant, backbone, batch) for variant in VARIANTS}
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_index in range(rounds + 1):  # round 0 warms up
        for variant, step in steps.items():
            started = time.perf_counter()
            step()
            if round_index:
                times[variant].append(time.perf_counter() - started)
    return {v: {"median_s": statistics.median(t), "min_s": min(t), "runs": len(t)} for v, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default: per size)")
    # One thread: on a machine shared with other work, extra threads mostly add variance.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "load_before": os.getloadavg(),
        "targets": TARGETS,
        "num_prompts": NUM_PROMPTS,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "sizes": {},
    }
    for size in args.sizes.split(","):
        timing = measure_time(size, args.rounds or ROUNDS[size])
        memory = {variant: measure_memory(size, variant, args.threads) for variant in VARIANTS}
        vpt, ft, floor = (timing[v]["median_s"] for v in ("vpt-deep", "finetune", "floor"))
        ratios = {
            **{f"{m}_vs_finetune_time": timing[m]["median_s"] / ft for m in PEFT},
            **{f"{m}_vs_finetune_memory": memory[m]["step_mib"] / max(memory["finetune"]["step_mib"], 1e-9)
               for m in PEFT},
            "vpt_vs_finetune_time": vpt / ft,
            "vpt_vs_floor_time": vpt / floor,
            "vpt_vs_finetune_memory": memory["vpt-deep"]["step_mib"]
            / max(memory["finetune"]["step_mib"], 1e-9),
            # context, no target: the best any prompt method could reach against fine-tuning on this model
            "floor_vs_finetune_time": floor / ft,
        }
        results["sizes"][size] = {
            "batch_size": SIZES[size],
            "time": timing,
            "memory": memory,
            "ratios": ratios,
            "meets": {k: ratios[k] <= TARGETS[k] for k in TARGETS},
        }
        print(f"{size}: " + ", ".join(f"{k}={v:.3f}" for k, v in ratios.items()), flush=True)
    results["load_after"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "visual_step.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "visual_step.md").write_text(render_markdown(results))
    print((out / "visual_step.md").read_text())


def render_markdown(results: dict) -> str:
    load = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(results["load_before"], results["load_after"]))
    lines = [
        "# Visual training step cost: VPT-deep and the parameter-efficient methods vs full fine-tuning (CPU, "
        + f"{results['threads']} threads, {results['num_prompts']} prompts per block)",
        "",
        (f"Machine load (1/5/15-min load average, before/after): {load}; {os.cpu_count()} cores, shared with "
         "other work, so only the ratios measured side by side in this run mean anything."),
        "",
        "| size | batch | variant | step time (median s) | step memory (MiB above built) | peak RSS in steps (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for size, entry in results["sizes"].items():
        for variant in VARIANTS:
            t, m = entry["time"][variant], entry["memory"][variant]
            lines.append(
                f"| {size} | {entry['batch_size']} | {variant} | {t['median_s']:.4f} | {m['step_mib']:.1f} "
                f"| {m['peak_mib']:.0f} |"
            )
    lines += ["", "| size | ratio | measured | target | met |", "|---|---|---|---|---|"]
    for size, entry in results["sizes"].items():
        for key, target in results["targets"].items():
            lines.append(
                f"| {size} | {key} | {entry['ratios'][key]:.3f} | <= {target} | "
                f"{'yes' if entry['meets'][key] else 'no'} |"
            )
        lines.append(
            f"| {size} | floor_vs_finetune_time (context) | {entry['ratios']['floor_vs_finetune_time']:.3f} | — | — |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
