"""Cost of the SPT initialisers for one token budget, and the quality of the streamed mini-batch k-means.

1. Time of each initialiser (spt-shallow and spt-deep, the frozen pass included) against the bare frozen pass
   over the same images. The pooling and sampling strategies need one random batch and stop there; k-means
   streams every image into a bounded reservoir and clusters it.
2. Peak memory of the k-means initialiser (own process, rise of the resident set during the initialisation)
   for the training set and for the same set doubled: it must stay flat, since at most ``token_budget`` tokens
   per insertion point are ever held.
3. Mini-batch k-means inertia against scikit-learn's KMeans (n_init=1, k-means++) on the identical token set
   (the reservoir), over three seeds.

4. At ViT-B/16 shape (``--b16``, a random-init timm ViT-B/16: width 768, 12 blocks, patch 16, at ``--b16-size``
   pixels, 224 by default, the real shape) on 1,024 images: the k-means initialiser against the bare frozen pass it
   needs and the random_sample initialiser, the arms in turns, fastest of each; plus the in-run ratio (the k-means
   run against itself minus its own clustering seconds), which a changing load moves far less. Written to
   visual_init_b16_{size}px.{json,md}; the notes are in visual_init_b16.md.

Images are deterministic smooth random fields (low-frequency noise, so that tokens have structure), made on the
fly from their index so that the dataset itself holds no memory; the backbone is the world MAE ViT's
architecture with random weights (cost does not depend on the weights).

    python benchmarks/bench_visual_init.py [--images 512] [--out benchmarks/results]
    python benchmarks/bench_visual_init.py --b16 [--b16-images 1024] [--b16-size 224] [--b16-variants spt-shallow]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import torch

TARGETS = {
    "inertia_vs_sklearn": 1.02,
    "memory_growth_when_doubled": 1.10,
}
NUM_PROMPTS = 10
TOKEN_BUDGET = 20000
BATCH = 64


def build_backbone():
    from vlprompt.backbones.timm_vit import wrap_timm_vit
    from vlprompt.backbones.world import build_world_mae

    torch.manual_seed(0)
    return wrap_timm_vit(build_world_mae().eval(), "random:world-mae-shaped", kind="mae")


def _smooth_image(index: int, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(index)
    coarse = torch.randn(1, 3, 4, 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0]


def make_dataset(num_images: int, size: int = 32):
    from functools import partial

    from vlprompt.data.base import ImageDataset

    load = partial(_smooth_image, size=size)
    return ImageDataset(list(range(num_images)), [i % 10 for i in range(num_images)], load=load)


def make_method(strategy: str, deep: bool, backbone):
    import vlprompt.methods.spt  # noqa: F401
    from vlprompt.data.base import LabelSpace
    from vlprompt.methods.base import create_method

    return create_method(
        "spt-deep" if deep else "spt-shallow",
        backbone,
        LabelSpace([f"c{i}" for i in range(10)]),
        num_tokens=NUM_PROMPTS,
        init=strategy,
        token_budget=TOKEN_BUDGET,
        init_batch_size=BATCH,
    )


@torch.no_grad()
def frozen_pass_seconds(backbone, dataset, deep: bool) -> float:
    """The bare pass every full-data initialiser must make: embed (+ blocks for deep) over all images."""
    from torch.utils.data import DataLoader

    started = time.perf_counter()
    for images, _ in DataLoader(dataset, batch_size=BATCH):
        tokens = backbone.visual.embed(images)
        if deep:
            for index in range(backbone.visual.num_blocks - 1):
                tokens = backbone.visual.block(index, tokens)
    return time.perf_counter() - started


def time_initialisers(num_images: int, repeats: int) -> dict:
    from vlprompt.prompts.init import INITIALIZERS

    backbone = build_backbone()
    dataset = make_dataset(num_images)
    results = {}
    for deep in (False, True):
        name = "spt-deep" if deep else "spt-shallow"
        runs: dict[str, list[float]] = {s: [] for s in (*INITIALIZERS, "frozen_pass")}
        for repeat in range(repeats):  # strategies take turns within each repeat
            for strategy in INITIALIZERS:
                method = make_method(strategy, deep, backbone)
                started = time.perf_counter()
                method.initialize_prompts(dataset, seed=repeat)
                runs[strategy].append(time.perf_counter() - started)
            runs["frozen_pass"].append(frozen_pass_seconds(backbone, dataset, deep))
        results[name] = {s: statistics.median(t) for s, t in runs.items()}
    return results


def _uptime() -> str:
    import subprocess

    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def b16_init_cost(num_images: int, size: int, repeats: int, variants: list[str]) -> dict:
    """k-means init, bare frozen pass and random_sample init at ViT-B/16 shape, taking turns; fastest of each arm,
    plus the in-run share (the clustering's own seconds measured inside the k-means run, against the rest of
    that same run), which a changing load moves far less than two separate runs."""
    import timm

    from vlprompt.backbones.timm_vit import wrap_timm_vit

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=size).eval()
    backbone = wrap_timm_vit(model, backbone_id=f"random:timm:vit_base_patch16@{size}px")
    dataset = make_dataset(num_images, size)
    results = {}
    for name in variants:
        deep = name == "spt-deep"
        runs: dict[str, list[float]] = {"kmeans": [], "frozen_pass": [], "random_sample": [], "clustering": []}
        uptime_start, report = _uptime(), None
        for repeat in range(repeats):
            method = make_method("kmeans", deep, backbone)
            started = time.perf_counter()
            report = method.initialize_prompts(dataset, seed=repeat)
            runs["kmeans"].append(time.perf_counter() - started)
            runs["clustering"].append(report.clustering_s)
            runs["frozen_pass"].append(frozen_pass_seconds(backbone, dataset, deep))
            method = make_method("random_sample", deep, backbone)
            started = time.perf_counter()
            method.initialize_prompts(dataset, seed=repeat)
            runs["random_sample"].append(time.perf_counter() - started)
        best = {arm: min(runs[arm]) for arm in ("kmeans", "frozen_pass", "random_sample")}
        in_run = [k / (k - c) for k, c in zip(runs["kmeans"], runs["clustering"])]
        results[name] = {
            **best, "ratio": best["kmeans"] / best["frozen_pass"], "in_run_ratio": max(in_run),
            "clustering_s": max(runs["clustering"]), "runs": runs, "tokens_seen": report.tokens_seen,
            "tokens_kept": report.tokens_kept, "uptime_start": uptime_start, "uptime_end": _uptime(),
        }
        print(name, json.dumps(results[name]), flush=True)
    return results


def write_b16(results: dict, args, out: Path) -> None:
    stem = f"visual_init_b16_{args.b16_size}px"
    payload = {
        "target_kmeans_vs_frozen_pass": 1.2, "images": args.b16_images, "image_size": args.b16_size,
        "num_prompts": NUM_PROMPTS, "token_budget": TOKEN_BUDGET, "batch": BATCH, "threads": 1,
        "repeats": args.b16_repeats, "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    patches = (args.b16_size // 16) ** 2
    lines = [
        (
            f"# SPT k-means initialiser against its frozen pass, ViT-B/16 shape ({args.b16_images} images of "
            f"{args.b16_size} px = {patches} patch tokens each, {NUM_PROMPTS} prompts, token budget {TOKEN_BUDGET}, "
            f"batch {BATCH}, 1 CPU thread)"
        ),
        "",
        (
            f"Random-init timm ViT-B/16 (width 768, 12 blocks, patch 16); arms in turns, fastest of "
            f"{args.b16_repeats}. Generated by `benchmarks/bench_visual_init.py --b16 --b16-size {args.b16_size}`. "
            "In-run ratio: the k-means run's time over that run minus its own clustering seconds (worst turn)."
        ),
        "",
        (
            "| method | k-means init | bare frozen pass | random_sample init | ratio | in-run ratio | target | "
            "tokens seen / kept per insertion point | load (uptime) at start / end |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    def load(text: str) -> str:
        return text.split("load average:")[-1].strip()

    for name, r in results.items():
        lines.append(
            f"| {name} | {r['kmeans']:.2f} s | {r['frozen_pass']:.2f} s | {r['random_sample']:.2f} s | "
            f"{r['ratio']:.2f} | {r['in_run_ratio']:.3f} | <= 1.2 | {r['tokens_seen']} / {r['tokens_kept']} | "
            f"{load(r['uptime_start'])} / {load(r['uptime_end'])} |"
        )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print((out / f"{stem}.md").read_text())


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_child(num_images: int, deep: bool, queue) -> None:
    torch.set_num_threads(1)
    backbone = build_backbone()
    dataset = make_dataset(num_images)
    method = make_method("kmeans", deep, backbone)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to now
    method.initialize_prompts(dataset, seed=0)
    queue.put(max(_status_kib("VmHWM") - before, 0) / 1024)


def kmeans_memory_mib(num_images: int, deep: bool) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_memory_child, args=(num_images, deep, queue))
    process.start()
    value = queue.get()
    process.join()
    return value


@torch.no_grad()
def reservoir_tokens(backbone, dataset, seed: int) -> tuple[torch.Tensor, torch.Generator]:
    """A shallow-insertion token set as the k-means initialiser builds it (bounded reservoir over all images)."""
    from torch.utils.data import DataLoader

    from vlprompt.prompts.kmeans import TokenReservoir

    generator = torch.Generator().manual_seed(seed)
    reservoir = TokenReservoir(TOKEN_BUDGET, generator)
    prefix = backbone.visual.num_prefix_tokens
    for images, _ in DataLoader(dataset, batch_size=BATCH):
        tokens = backbone.visual.embed(images)
        reservoir.add(tokens[:, prefix:].reshape(-1, tokens.shape[-1]).float())
    return reservoir.tokens(), generator


def compare_with_sklearn(num_images: int, seeds: int) -> list[dict]:
    from sklearn.cluster import KMeans

    from vlprompt.prompts.kmeans import minibatch_kmeans

    backbone = build_backbone()
    dataset = make_dataset(num_images)
    rows = []
    for seed in range(seeds):
        tokens, generator = reservoir_tokens(backbone, dataset, seed)
        started = time.perf_counter()
        ours = minibatch_kmeans(tokens, NUM_PROMPTS, generator)
        ours_s = time.perf_counter() - started
        started = time.perf_counter()
        reference = KMeans(NUM_PROMPTS, init="k-means++", n_init=1, random_state=seed).fit(
            tokens.double().numpy()
        )
        sklearn_s = time.perf_counter() - started
        rows.append(
            {
                "seed": seed,
                "tokens": tokens.shape[0],
                "ours_inertia": ours.inertia,
                "ours_seeding_inertia": ours.seeding_inertia,
                "sklearn_inertia": float(reference.inertia_),
                "ratio": ours.inertia / float(reference.inertia_),
                "ours_s": ours_s,
                "sklearn_s": sklearn_s,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--b16", action="store_true", help="only the ViT-B/16-shape k-means vs frozen pass run")
    parser.add_argument("--b16-images", type=int, default=1024)
    parser.add_argument("--b16-size", type=int, default=224)
    parser.add_argument("--b16-repeats", type=int, default=2)
    parser.add_argument("--b16-variants", default="spt-shallow,spt-deep")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.b16:
        variants = args.b16_variants.split(",")
        write_b16(b16_init_cost(args.b16_images, args.b16_size, args.b16_repeats, variants), args, Path(args.out))
        return
    timing = time_initialisers(args.images, args.repeats)
    memory = {
        name: {
            "images": kmeans_memory_mib(args.images, deep),
            "doubled": kmeans_memory_mib(2 * args.images, deep),
        }
        for name, deep in (("spt-shallow", False), ("spt-deep", True))
    }
    sklearn_rows = compare_with_sklearn(args.images, seeds=3)
    shallow = timing["spt-shallow"]
    summary = {
        "kmeans_vs_random_sample_time": {n: t["kmeans"] / t["random_sample"] for n, t in timing.items()},
        "kmeans_vs_frozen_pass_time": {n: t["kmeans"] / t["frozen_pass"] for n, t in timing.items()},
        "inertia_vs_sklearn": max(r["ratio"] for r in sklearn_rows),
        "memory_growth_when_doubled": {n: m["doubled"] / max(m["images"], 1e-9) for n, m in memory.items()},
    }
    results = {
        "targets": TARGETS,
        "images": args.images,
        "token_budget": TOKEN_BUDGET,
        "num_prompts": NUM_PROMPTS,
        "batch": BATCH,
        "threads": 1,
        "time_s": timing,
        "kmeans_memory_mib": memory,
        "sklearn": sklearn_rows,
        "summary": summary,
        "shallow_random_sample_s": shallow["random_sample"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "visual_init.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "visual_init.md").write_text(render_markdown(results))
    print((out / "visual_init.md").read_text())


def render_markdown(results: dict) -> str:
    from vlprompt.prompts.init import INITIALIZERS

    lines = [
        (
            f"# SPT initialiser cost ({results['images']} images of 32 px, token budget {results['token_budget']} per "
            f"insertion point, {results['num_prompts']} prompts, 1 CPU thread)"
        ),
        "",
        "| method | " + " | ".join(INITIALIZERS) + " | bare frozen pass |",
        "|---|" + "---|" * (len(INITIALIZERS) + 1),
    ]
    for name, times in results["time_s"].items():
        lines.append(
            f"| {name} | " + " | ".join(f"{times[s]:.3f} s" for s in (*INITIALIZERS, "frozen_pass")) + " |"
        )
    lines += ["", "| k-means init memory (rise of RSS) | training set | doubled |", "|---|---|---|"]
    for name, m in results["kmeans_memory_mib"].items():
        lines.append(f"| {name} | {m['images']:.1f} MiB | {m['doubled']:.1f} MiB |")
    lines += [
        "",
        (
            "| seed | tokens | ours (mini-batch + Lloyd) | k-means++ seeding only | scikit-learn KMeans | ratio |"
            " ours s | sklearn s |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["sklearn"]:
        lines.append(
            f"| {r['seed']} | {r['tokens']} | {r['ours_inertia']:.1f} | {r['ours_seeding_inertia']:.1f} | "
            f"{r['sklearn_inertia']:.1f} | {r['ratio']:.4f} | {r['ours_s']:.2f} | {r['sklearn_s']:.2f} |"
        )
    s, t = results["summary"], results["targets"]
    lines += ["", "| measure | measured | target |", "|---|---|---|"]
    for name, value in s["kmeans_vs_random_sample_time"].items():
        lines.append(f"| k-means / random_sample init time ({name}) | {value:.2f} | (context) |")
    for name, value in s["kmeans_vs_frozen_pass_time"].items():
        lines.append(f"| k-means init / bare frozen pass time ({name}) | {value:.2f} | (see --b16) |")
    lines.append(
        f"| worst inertia / scikit-learn | {s['inertia_vs_sklearn']:.4f} | <= {t['inertia_vs_sklearn']} |"
    )
    for name, value in s["memory_growth_when_doubled"].items():
        lines.append(
            f"| k-means memory, doubled / single set ({name}) | {value:.2f} | flat (<= "
            f"{t['memory_growth_when_doubled']}) |"
        )
    lines += [
        "",
        "The pooling and sampling initialisers forward only their one random batch, while k-means must stream",
        "every image, so their ratio grows with the set by construction and is context, not a target. The",
        "target is the bare-pass ratio at the issue's shape (ViT-B/16, 224 px, 1,024+ images; `--b16`,",
        "visual_init_b16.md): at this tiny 32 px shape a pass costs a fraction of a second and the clustering's",
        "fixed part (seeding, one Lloyd pass) dominates it.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
