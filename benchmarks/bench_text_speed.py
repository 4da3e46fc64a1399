"""Speed of the CLIP text-prompt methods: feature caching, ProGrad's extra gradient, mixture inference.

Three measurements, each as ratios taken in one run (variants interleaved where they are short):

1. End-to-end 16-shot CoOp training through the single Trainer, with the image features cached once (exact,
   no augmentation) against the same Trainer running the image tower every step on freshly augmented images
   (random resized crop + flip), as the reference code does. On the world CLIP (24 shape classes; the shipped
   weights when present, else the same architecture at random init) both arms run the whole schedule and the
   test accuracy of both is recorded, plus a third arm with K augmented views cached. On a ViT-B/16-shaped
   random-init open_clip CLIP at 224 px (4 classes) the per-step arm runs ``--b16-uncached-epochs`` epochs and
   its full-schedule time is extrapolated linearly from its measured per-epoch time (stated in the table).
2. One training step (forward, gradients, optimizer) of ProGrad against CoOp on cached image features.
3. Inference of the mixture of prompt experts against CoOp: the whole test-set evaluation from images (class
   features computed once per evaluation), and the per-batch head alone on cached features.
4. Peak memory of one training step with 1,000 classes on the world CLIP, one encoder call against class chunks.

Run on CPU with one thread by default: the machine is shared, and extra threads there mostly add variance.

    python benchmarks/bench_text_speed.py cache [--epochs 50]   # -> results/text_cache.{json,md}
    python benchmarks/bench_text_speed.py steps                 # -> results/text_steps.{json,md}
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

from vlprompt.data.base import ImageDataset, LabelSpace, TaskData
from vlprompt.data.features import encode_dataset
from vlprompt.data.transforms import eval_transform
from vlprompt.eval.tasks import evaluate
from vlprompt.methods import create_method, import_all
from vlprompt.train import TrainConfig, Trainer

TARGETS = {"cache_speedup": 20.0, "cache_accuracy_pts": 1.0, "prograd_vs_coop_step": 1.3, "mixture_vs_coop_inference": 1.2}
WORLD_TASK = "object"
B16_CLASSES = ["airplane", "bicycle", "horse", "tulip"]


# ----- backbones and data -----
def world_backbone() -> tuple[object, bool]:
    """The shipped world CLIP when its weights exist, else the same architecture with random weights."""
    from vlprompt.backbones.open_clip import open_clip_preprocess, wrap_open_clip
    from vlprompt.backbones.world import CLIP_DIR, build_world_clip, world_clip_tokenizer
    from vlprompt.core.errors import VlpromptError

    try:
        from vlprompt.backbones.registry import create_backbone

        return create_backbone("world:clip"), True
    except (VlpromptError, FileNotFoundError, OSError) as error:
        print(f"world CLIP weights unavailable in {CLIP_DIR} ({error}); using the architecture at random init")
    torch.manual_seed(0)
    model = build_world_clip().eval()
    return wrap_open_clip(model, world_clip_tokenizer(), open_clip_preprocess(model), "random:world-clip-shaped"), False


def world_task(test_per_class: int) -> TaskData:
    from vlprompt.data.world.tasks import load_world_task

    return load_world_task(WORLD_TASK, train_per_class=16, val_per_class=0, test_per_class=test_per_class, seed=0)


class NoiseImages:
    """Deterministic 224-px noise images (the random-init ViT-B/16 model's accuracy is not meaningful)."""

    def __call__(self, source: str):
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(int(source.rsplit("/", 1)[1]))
        return Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))


def b16_task() -> TaskData:
    def split(name: str, count: int) -> ImageDataset:
        return ImageDataset([f"noise/{name}/{i}" for i in range(count)], [i % 4 for i in range(count)], NoiseImages(),
                            name=f"noise:{name}")

    from vlprompt.data.world.tasks import get_world_task

    groups = get_world_task(WORLD_TASK).label_space().template_groups
    return TaskData("noise", LabelSpace(B16_CLASSES, ["a photo of a {}."], dict(groups)), split("train", 64),
                    split("test", 16))


# ----- 1. cached vs per-step image tower -----
def fit_timed(method, task: TaskData, config: TrainConfig) -> tuple[float, float]:
    result = Trainer(method, config).fit(task)
    return result.train_seconds, evaluate(method, task.test, batch_size=256, device="cpu")


def cache_arms(backbone, task: TaskData, epochs: int, uncached_epochs: int, views: int, interleave_rounds: int) -> dict:
    common = {"batch_size": 32, "lr": 0.002, "optimizer": "sgd", "seed": 1, "device": "cpu", "progress": False, "warmup_epochs": 1}
    arms = {}
    torch.manual_seed(0)
    cached = create_method("coop", backbone, task.labels, n_ctx=16)
    seconds, accuracy = fit_timed(cached, task, TrainConfig(epochs=epochs, augment="none", **common))
    arms["cached_exact"] = {"epochs": epochs, "seconds": seconds, "test_accuracy": accuracy}
    if views > 1:
        torch.manual_seed(0)
        method = create_method("coop", backbone, task.labels, n_ctx=16)
        config = TrainConfig(epochs=epochs, augment="crop_flip", feature_views=views, **common)
        seconds, accuracy = fit_timed(method, task, config)
        arms[f"cached_{views}_views"] = {"epochs": epochs, "seconds": seconds, "test_accuracy": accuracy}
    torch.manual_seed(0)
    per_step = create_method("coop", backbone, task.labels, n_ctx=16)
    per_step.uses_image_features = False  # image tower on augmented images every step, like the reference code
    seconds, accuracy = fit_timed(per_step, task, TrainConfig(epochs=uncached_epochs, augment="crop_flip", **common))
    arm = {"epochs": uncached_epochs, "seconds": seconds, "test_accuracy": accuracy}
    if uncached_epochs != epochs:
        arm["seconds_extrapolated_to_schedule"] = seconds / uncached_epochs * epochs
        arm["test_accuracy"] = None  # a shorter schedule's accuracy is not comparable
    arms["per_step_image_tower"] = arm
    per_step_seconds = arm.get("seconds_extrapolated_to_schedule", seconds)
    summary = {"speedup": per_step_seconds / arms["cached_exact"]["seconds"], "extrapolated": uncached_epochs != epochs}
    if interleave_rounds:
        summary["interleaved"] = interleaved_components(backbone, task, epochs, interleave_rounds)
    if arm["test_accuracy"] is not None:
        summary["accuracy_gap_pts"] = 100 * (arms["cached_exact"]["test_accuracy"] - arm["test_accuracy"])
    return {"arms": arms, **summary}


def interleaved_components(backbone, task: TaskData, epochs: int, rounds: int) -> dict:
    """The cache speed-up from components timed in alternation, so that load from other processes, which
    drifts over minutes on a shared machine, hits both arms alike: one cached epoch (features read back from
    the disk cache), one epoch of the per-step arm, and the one-time feature encoding, round by round."""
    import tempfile

    common = {"batch_size": 32, "lr": 0.002, "optimizer": "sgd", "seed": 1, "device": "cpu", "progress": False, "warmup_epochs": 0}
    times: dict[str, list[float]] = {"cached_epoch": [], "per_step_epoch": [], "encode": []}
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(rounds + 1):  # round 0 warms up (and fills the disk cache)
            method = create_method("coop", backbone, task.labels, n_ctx=16)
            cached = Trainer(method, TrainConfig(epochs=1, augment="none", cache_dir=folder, **common)).fit(task)
            per_step = create_method("coop", backbone, task.labels, n_ctx=16)
            per_step.uses_image_features = False
            stepped = Trainer(per_step, TrainConfig(epochs=1, augment="crop_flip", **common)).fit(task)
            started = time.perf_counter()
            encode_dataset(method.image_features, task.train.with_transform(eval_transform(backbone.preprocess)),
                           batch_size=256)
            encode = time.perf_counter() - started
            if round_index:
                times["cached_epoch"].append(cached.train_seconds)
                times["per_step_epoch"].append(stepped.train_seconds)
                times["encode"].append(encode)
    ratios = [epochs * p / (e + epochs * c)
              for c, p, e in zip(times["cached_epoch"], times["per_step_epoch"], times["encode"])]
    return {"rounds": rounds, "seconds": medians(times), "speedup": statistics.median(ratios)}


# ----- 2. ProGrad step vs CoOp step -----
def train_step(method, batch: dict) -> Callable[[], None]:
    params = method.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step() -> None:
        outputs = method(batch)
        if hasattr(method, "grad_transform"):
            grads = method.grad_transform(outputs, params)
        else:
            grads = torch.autograd.grad(outputs["loss"], params, allow_unused=True)
        for param, grad in zip(params, grads):
            param.grad = grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call in each round; the variants take turns within a round (round 0 warms up), so a ratio
    of two variants taken round by round sees the same load from other processes on the machine."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(rounds + 1):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_index:
                times[name].append(time.perf_counter() - started)
    return times


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of the per-round ratio."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


def step_ratio(backbone, labels: LabelSpace, rounds: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    batch = {"features": torch.randn(32, backbone.visual.feature_dim, generator=generator),
             "label": torch.randint(labels.num_classes, (32,), generator=generator)}
    steps = {}
    for name in ("coop", "prograd"):
        torch.manual_seed(0)
        steps[name] = train_step(create_method(name, backbone, labels, n_ctx=16).train(), batch)
    times = interleaved(steps, rounds)
    return {"step_seconds": medians(times), "ratio": paired_ratio(times, "prograd", "coop"),
            "classes": labels.num_classes, "rounds": rounds}


# ----- 3. mixture inference vs CoOp inference -----
def inference_ratio(backbone, task: TaskData, rounds: int) -> dict:
    methods = {
        "coop": create_method("coop", backbone, task.labels, ctx_init="template").eval(),
        "mocoop": create_method("mocoop", backbone, task.labels).eval(),
    }
    for method in methods.values():  # a trained state: move the prompts off their initial values
        with torch.no_grad():
            for param in method.trainable_parameters():
                param.add_(0.01 * torch.randn_like(param))

    def full_eval(method) -> Callable[[], float]:
        def run() -> float:
            with torch.no_grad():
                for param in method.trainable_parameters():  # a new evaluation: class features are rebuilt
                    param.add_(0.0)
            return evaluate(method, task.test, batch_size=256, device="cpu")

        return run

    end_to_end = interleaved({name: full_eval(m) for name, m in methods.items()}, rounds)
    features = torch.nn.functional.normalize(torch.randn(256, backbone.visual.feature_dim), dim=-1)

    def head(method) -> Callable[[], object]:
        def run():
            with torch.no_grad():
                return method({"features": features})["logits"]

        return run

    heads = interleaved({name: head(m) for name, m in methods.items()}, rounds * 10)

    def build(method) -> Callable[[], object]:
        def run():
            with torch.no_grad():
                for param in method.trainable_parameters():
                    param.add_(0.0)
                return method({"features": features[:1]})

        return run

    builds = interleaved({name: build(m) for name, m in methods.items()}, rounds)
    experts = methods["mocoop"].mixture.num_experts
    return {
        "test_images": len(task.test),
        "experts": experts,
        "top_k": methods["mocoop"].config.top_k,
        "rounds": rounds,
        "evaluation_seconds": medians(end_to_end),
        "ratio": paired_ratio(end_to_end, "mocoop", "coop"),
        "head_seconds_per_256": medians(heads),
        "head_ratio": paired_ratio(heads, "mocoop", "coop"),
        "class_feature_build_seconds": medians(builds),
        "class_feature_build_ratio": paired_ratio(builds, "mocoop", "coop"),
    }


# ----- 4. memory with many classes -----
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_child(method: str, options: dict, classes: int, queue) -> None:
    torch.set_num_threads(1)
    import_all()
    world, _ = world_backbone()
    labels = LabelSpace([f"thing {i}" for i in range(classes)], ["a photo of a {}."])
    model = create_method(method, world, labels, **options)
    batch = {"features": torch.randn(32, world.visual.feature_dim), "label": torch.randint(classes, (32,))}
    model.train()
    before = _status_kib("VmRSS")
    # Linux: writing 5 to clear_refs resets the peak-RSS mark, so the peak below is this step's own.
    Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    params = model.trainable_parameters()
    torch.autograd.grad(model(batch)["loss"], params, allow_unused=True)
    seconds = time.perf_counter() - started
    queue.put({"step_mib": max(_status_kib("VmHWM") - before, 0) / 1024, "step_seconds": seconds})


def memory_many_classes(classes: int) -> dict:
    """Peak memory of one training step with many classes: one encoder call vs class chunks (recomputed in
    backward), each variant in its own fresh process."""
    import multiprocessing

    variants = {
        "coop, one call": ("coop", {"n_ctx": 16, "class_chunk": classes}),
        "coop, chunks of 128": ("coop", {"n_ctx": 16, "class_chunk": 128}),
        # one call would be 32 x classes prompts with activations kept for backward: tens of GiB, not run
        "cocoop, 2048 prompts per call": ("cocoop", {"prompts_per_call": 2048}),
    }
    context = multiprocessing.get_context("spawn")
    results = {}
    for name, (method, options) in variants.items():
        queue = context.Queue()
        process = context.Process(target=_memory_child, args=(method, options, classes, queue))
        process.start()
        results[name] = queue.get()
        process.join()
    return {"classes": classes, "batch": 32, "variants": results}


def run_cache(args, world, trained: bool) -> dict:
    from vlprompt.backbones.tiny import clip_b16_shaped

    results = {"targets": TARGETS, "threads": args.threads, "torch": torch.__version__, "epochs": args.epochs,
               "machine": platform.processor() or platform.machine(), "world_backbone": world.backbone_id,
               "world_weights_trained": trained}
    previous = Path(args.out) / "text_cache.json"
    if "b16" not in args.models and previous.exists():  # keep the other model's figures from its own run
        results["cache_b16"] = json.loads(previous.read_text()).get("cache_b16")
        results["cache_b16_from_earlier_run"] = True
    if "world" in args.models:
        results["cache_world"] = cache_arms(world, world_task(test_per_class=20), args.epochs, args.epochs, args.views,
                                            interleave_rounds=3)
        print("cache world", json.dumps(results["cache_world"]), flush=True)
    if "b16" in args.models:
        b16 = clip_b16_shaped(seed=0)
        results["cache_b16"] = cache_arms(b16, b16_task(), args.epochs, args.b16_uncached_epochs, 1, interleave_rounds=0)
        print("cache b16", json.dumps(results["cache_b16"]), flush=True)
    return results


def run_steps(args, world, trained: bool) -> dict:
    from vlprompt.backbones.tiny import clip_b16_shaped

    results = {"targets": TARGETS, "threads": args.threads, "torch": torch.__version__,
               "machine": platform.processor() or platform.machine(), "world_backbone": world.backbone_id,
               "world_weights_trained": trained}
    task = world_task(test_per_class=20)
    results["prograd_world"] = step_ratio(world, task.labels, args.rounds)
    print("prograd world", json.dumps(results["prograd_world"]), flush=True)
    results["mixture_world"] = inference_ratio(world, task, max(3, args.rounds // 4))
    print("mixture world", json.dumps(results["mixture_world"]), flush=True)
    b16, small = clip_b16_shaped(seed=0), b16_task()
    results["prograd_b16"] = step_ratio(b16, small.labels, max(5, args.rounds // 2))
    print("prograd b16", json.dumps(results["prograd_b16"]), flush=True)
    results["mixture_b16"] = inference_ratio(b16, small, 3)
    print("mixture b16", json.dumps(results["mixture_b16"]), flush=True)
    results["memory_world"] = memory_many_classes(args.many_classes)
    print("memory world", json.dumps(results["memory_world"]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("cache", "steps"), help="cache: measurement 1; steps: measurements 2 and 3")
    parser.add_argument("--epochs", type=int, default=50, help="training schedule of the cached arms")
    parser.add_argument("--b16-uncached-epochs", type=int, default=1)
    parser.add_argument("--views", type=int, default=4, help="augmented views in the world's cached-views arm")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--models", default="world,b16", help="cache part: which models to measure")
    parser.add_argument("--many-classes", type=int, default=1000, help="class count of the memory measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import_all()
    world, trained = world_backbone()
    started = time.perf_counter()
    results = (run_cache if args.part == "cache" else run_steps)(args, world, trained)
    results["total_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    render = render_cache if args.part == "cache" else render_steps
    (out / f"text_{args.part}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"text_{args.part}.md").write_text(render(results))
    print((out / f"text_{args.part}.md").read_text())


def _accuracy(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _header(results: dict, title: str) -> list[str]:
    world_note = "shipped weights" if results["world_weights_trained"] else "architecture at random init"
    return [
        f"# {title} (CPU, {results['threads']} thread, torch {results['torch']})",
        "",
        (f"World CLIP: `{results['world_backbone']}` ({world_note}). ViT-B/16: random-init open_clip ViT-B-16 at "
        f"224 px. Generated by `benchmarks/bench_text_speed.py`; total {results['total_seconds']:.0f} s."),
        "",
    ]


def _row(lines: list[str], name: str, value: float, target: str, met: bool | None) -> None:
    verdict = "—" if met is None else ("yes" if met else "no")
    lines.append(f"| {name} | {value:.2f} | {target} | {verdict} |")


def render_cache(results: dict) -> str:
    t = results["targets"]
    lines = _header(results, "16-shot CoOp training: cached image features vs the image tower every step")
    if results.get("cache_b16_from_earlier_run"):
        lines += [("The ViT-B/16 rows come from an earlier run of this script; each model's ratio is "
                  "from one run."), ""]
    lines += ["| model | arm | epochs | train s | test acc % |", "|---|---|---|---|---|"]
    for key, model in (("cache_world", "world CLIP, 24 classes"), ("cache_b16", "ViT-B/16 224, 4 classes")):
        for arm, entry in (results.get(key) or {"arms": {}})["arms"].items():
            seconds = f"{entry['seconds']:.1f}"
            if "seconds_extrapolated_to_schedule" in entry:
                seconds += f" (→ {entry['seconds_extrapolated_to_schedule']:.0f} for {results['epochs']} epochs)"
            lines.append(f"| {model} | {arm} | {entry['epochs']} | {seconds} | {_accuracy(entry['test_accuracy'])} |")
    lines += ["", "| measure | measured | target | met |", "|---|---|---|---|"]
    for key, model in (("cache_world", "world"), ("cache_b16", "ViT-B/16")):
        entry = results.get(key)
        if not entry:
            continue
        suffix = " (per-step arm extrapolated)" if entry["extrapolated"] else ""
        _row(lines, f"cache speed-up, {model}, end-to-end runs{suffix}", entry["speedup"],
             f">= {t['cache_speedup']}x", entry["speedup"] >= t["cache_speedup"])
        parts = entry.get("interleaved")
        if parts:
            sec = parts["seconds"]
            _row(lines, f"cache speed-up, {model}, from interleaved components ({results['epochs']} × "
                 f"{sec['per_step_epoch']:.2f} s / ({sec['encode']:.2f} s + {results['epochs']} × "
                 f"{sec['cached_epoch']:.2f} s))", parts["speedup"], f">= {t['cache_speedup']}x",
                 parts["speedup"] >= t["cache_speedup"])
        if "accuracy_gap_pts" in entry:
            gap = entry["accuracy_gap_pts"]
            meaningful = results["world_weights_trained"] or key != "cache_world"
            _row(lines, f"accuracy cached − per-step, {model} (pts)", gap, f"± {t['cache_accuracy_pts']}",
                 abs(gap) <= t["cache_accuracy_pts"] if meaningful else None)
    return "\n".join(lines) + "\n"


def render_steps(results: dict) -> str:
    t = results["targets"]
    lines = _header(results, "ProGrad step and mixture inference against CoOp")
    lines += ["| measure | measured | target | met |", "|---|---|---|---|"]
    for key, model in (("prograd_world", "world, 24 classes"), ("prograd_b16", "ViT-B/16, 4 classes")):
        entry = results[key]
        seconds = entry["step_seconds"]
        _row(lines, f"ProGrad step / CoOp step, {model} ({1000 * seconds['prograd']:.1f} / "
             f"{1000 * seconds['coop']:.1f} ms)", entry["ratio"], f"<= {t['prograd_vs_coop_step']}x",
             entry["ratio"] <= t["prograd_vs_coop_step"])
    for key, model in (("mixture_world", "world"), ("mixture_b16", "ViT-B/16")):
        entry = results[key]
        seconds = entry["evaluation_seconds"]
        _row(lines, f"mixture / CoOp, whole evaluation of {entry['test_images']} images, {model} "
             f"({seconds['mocoop']:.2f} / {seconds['coop']:.2f} s)", entry["ratio"],
             f"<= {t['mixture_vs_coop_inference']}x", entry["ratio"] <= t["mixture_vs_coop_inference"])
        _row(lines, f"mixture / CoOp, head alone on 256 cached features, {model}", entry["head_ratio"], "—", None)
        _row(lines, f"mixture / CoOp, class features built once per evaluation, {model} ({entry['experts']} "
             f"experts, top-{entry['top_k']})", entry["class_feature_build_ratio"], "—", None)
    memory = results.get("memory_world")
    if memory:
        lines += ["", (f"One training step with {memory['classes']} classes on the world CLIP (batch {memory['batch']}), "
                  "each variant in a fresh process:"), "", "| variant | peak memory above built (MiB) | step s |",
                  "|---|---|---|"]
        for name, entry in memory["variants"].items():
            lines.append(f"| {name} | {entry['step_mib']:.0f} | {entry['step_seconds']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
