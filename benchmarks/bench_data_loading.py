"""Images per second that the training loader delivers into a ViT-B/16-shaped tower: 0 vs N workers.

The data: world-object exported by ``vlprompt world export`` as 224 px JPEGs (ImageFolder layout), read back
through the imagefolder reader, with the trainer's own training transform of a timm ViT-B/16 (crop_flip:
RandomResizedCrop 224 + flip + normalise) and the trainer's own loader (data/loading.py: per-item seeded
augmentation, persistent workers). The consumer is the tower's input stage (its patch embedding): on a GPU the
whole ViT-B/16 forward takes a millisecond or two per image, so the loader, not the tower, is what can starve
it; on this CPU the full forward takes about a second per image (measured once, reported as context), which
would hide any loader difference.

Rounds alternate between the worker counts so that load from other processes hits both alike; the figure is
the median over rounds, and the 1-minute load average is recorded before and after. Each round also records
the CPU cores the loader actually received (CPU seconds of the process and its workers per wall second): on a
machine loaded by other work, N workers can only be as much faster as the scheduler gives them cores.

    python benchmarks/bench_data_loading.py [--workers 2] [--rounds 5] [--per-class 32] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

TARGET_SPEEDUP = 1.8
BATCH_SIZE = 32


def build(per_class: int, folder: Path):
    from vlprompt.backbones.tiny import vit_b16_shaped
    from vlprompt.data.registry import load_dataset
    from vlprompt.data.transforms import train_transform
    from vlprompt.data.world.export import export_world_task

    root = export_world_task("object", folder / "jpegs", per_class=per_class, image_size=224, image_format="jpeg")
    backbone = vit_b16_shaped(seed=0)
    dataset = load_dataset("imagefolder", root=str(root)).train
    return backbone, dataset.with_transform(train_transform(backbone.preprocess, "crop_flip"))


def _cpu_seconds() -> float:
    """CPU time of this process and its live children (the loader's workers), from /proc (Linux)."""
    pids = [os.getpid()]
    for task in Path("/proc/self/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def time_pass(loader, epoch: int, batches: list[list[int]], consume) -> tuple[float, float]:
    """(images/s, CPU cores this pass actually received: CPU seconds of main + workers / wall seconds)."""
    started, cpu = time.perf_counter(), _cpu_seconds()
    count = 0
    for images, _ in loader.run(epoch, batches):
        consume(images)
        count += images.shape[0]
    wall = time.perf_counter() - started
    return count / wall, (_cpu_seconds() - cpu) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker count compared with 0 (default: 2 cores)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=32, help="train images per class (24 classes)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    from vlprompt.data.loading import BatchLoader

    # The training process's own torch threads would compete with the workers for the same cores.
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        backbone, dataset = build(args.per_class, Path(tmp))
        tower = backbone.visual.model
        order = list(range(len(dataset)))
        batches = [order[i : i + BATCH_SIZE] for i in range(0, len(order), BATCH_SIZE)]

        @torch.no_grad()
        def consume(images: torch.Tensor) -> None:
            tower.patch_embed(images)

        loaders = {n: BatchLoader(dataset, seed=1, num_workers=n) for n in (0, args.workers)}
        for n, loader in loaders.items():  # warm-up: fork the persistent workers, fill caches
            time_pass(loader, 0, batches, consume)
        rates: dict[int, list[float]] = {n: [] for n in loaders}
        cores: dict[int, list[float]] = {n: [] for n in loaders}
        for round_ in range(args.rounds):
            for n in (loaders if round_ % 2 == 0 else reversed(list(loaders))):
                rate, used = time_pass(loaders[n], round_ + 1, batches, consume)
                rates[n].append(rate)
                cores[n].append(used)
        with torch.no_grad():
            images = next(loaders[0].run(0, [order[:4]]))[0]
            started = time.perf_counter()
            tower(images)
            tower_rate = 4 / (time.perf_counter() - started)
        del loaders
    load_after = os.getloadavg()
    median = {n: statistics.median(r) for n, r in rates.items()}
    speedup = median[args.workers] / median[0]
    # Images per CPU-second: what each path costs, independent of how many cores the scheduler handed out.
    per_cpu_s = {n: statistics.median(r / c for r, c in zip(rates[n], cores[n])) for n in rates}
    results = {
        "images": len(dataset),
        "image_size": 224,
        "batch_size": BATCH_SIZE,
        "transform": "crop_flip (RandomResizedCrop 224, flip, normalise) from 224 px JPEG",
        "consumer": "timm vit_base_patch16_224 (random init) patch embedding",
        "images_per_s": {str(n): {"median": median[n], "rounds": rates[n], "cpu_cores_received": cores[n]}
                         for n in rates},
        "speedup": speedup,
        "images_per_cpu_second": {str(n): v for n, v in per_cpu_s.items()},
        # An estimate, not a measurement: N single-threaded workers on N idle cores vs one process on one.
        "projected_speedup_on_idle_cores": min(args.workers, os.cpu_count() or 1)
        * per_cpu_s[args.workers] / per_cpu_s[0],
        "target_speedup": TARGET_SPEEDUP,
        "meets": speedup >= TARGET_SPEEDUP,
        "full_tower_images_per_s_cpu_1_thread": tower_rate,
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_loading.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "data_loading.md").write_text(render_markdown(results, args.workers))
    print((out / "data_loading.md").read_text())


def render_markdown(results: dict, workers: int) -> str:
    rate = results["images_per_s"]
    load = results["load_average_1min"]
    return "\n".join([
        (f"# Training loader into a ViT-B/16-shaped tower ({results['images']} JPEGs, 224 px, batch "
        f"{results['batch_size']}, {results['cpu_count']} CPUs)"),
        "",
        "| workers | images/s (median) | images/s per round | CPU cores received per round |",
        "|---|---|---|---|",
        *(f"| {n} | {r['median']:.1f} | {', '.join(f'{x:.1f}' for x in r['rounds'])} | "
          f"{', '.join(f'{x:.2f}' for x in r['cpu_cores_received'])} |" for n, r in rate.items()),
        "",
        (f"Speed-up {workers} workers vs 0: **{results['speedup']:.2f}x** (target >= {results['target_speedup']}: "
        f"{'met' if results['meets'] else 'not met'}). 1-minute load average {load['before']:.2f} before, "
        f"{load['after']:.2f} after (other processes share these cores). Context: the full ViT-B/16 forward runs "
        f"at {results['full_tower_images_per_s_cpu_1_thread']:.2f} images/s on this CPU (1 thread), so on CPU the "
        "tower, not the loader, sets the pace; on a GPU the loader rate above is the ceiling."),
        "",
        "Images per CPU-second (cost per image, whatever the load): "
        + ", ".join(f"{n} workers {v:.1f}" for n, v in results["images_per_cpu_second"].items())
        + f". Estimate for {workers} idle cores (not measured): "
        f"{results['projected_speedup_on_idle_cores']:.2f}x.",
        "",
    ])


if __name__ == "__main__":
    main()
