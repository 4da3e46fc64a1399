"""Segmentation on the world: linear vs full fine-tuning vs VPT-deep vs SPT-deep vs the PETL rows, with a SETR-PUP
head on ``world:mae``, through the library's own experiment path (run folders that ``vlprompt report`` reads).

Quality: mIoU / mAcc / aAcc on ``world-seg`` (exact confusion matrix at the original size) over seeds. Cost:
tuned parameters (backbone side and head, % of the backbone), step time (median of interleaved rounds: the methods
take turns, so load from other processes hits them alike) and the rise of peak resident memory during two steps,
each method in its own fresh process, as ratios to full fine-tuning measured side by side.

The task is ``world-seg`` with ``classes=colour`` (background + the 8 paints): with the default ``classes=shape``
(24 shapes) every method stays at the all-background prediction at any size this machine affords, because the
world towers' patch tokens do not tell the shapes apart from tens of images (segmentation_notes.md has the
figures). Sizes (2 shared CPU cores): 64 training images (whole images, no augmentation), 64 test images, 75 epochs
of batch 8 (600 steps: on this task a SETR head at lr 1e-2 leaves the all-background prediction after 100-180
steps, and 300 cosine-decayed steps of batch 16 left every method within 5 points of it), a 32-channel SETR-PUP
head without auxiliary heads; each method's own train_defaults, with the head's
lr multiplier at its default (x10 where the method's lr is a pretrained weights' lr: finetune, bias, adapter, lora,
ssf), except full fine-tuning at lr 1e-3, SETR's backbone lr (its default 1e-4 puts the head at 1e-3, still
all-background after 75 steps). Every head thus trains at 1e-2. Runs are appended to ``<work>/records.jsonl`` as
they finish; a rerun skips finished runs (the run folders say so).

    python benchmarks/bench_segmentation.py [--methods linear,vpt-deep] [--seeds 1,2,3] [--work /tmp/bench_seg]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
METHODS = ("linear", "finetune", "vpt-deep", "spt-deep", "bias", "adapter", "lora", "ssf")
PETL = ("bias", "adapter", "lora", "ssf")  # run with --petl-seeds only (the machine's budget)
BACKBONE = "world:mae"
DATA = {"train_images": 64, "val_images": 0, "test_images": 64, "classes": "colour"}
HEAD = {"kind": "setr-pup", "channels": 32, "aux_blocks": "none"}
TRAIN = {"epochs": 75, "batch_size": 8, "augment": "none", "num_workers": 0, "progress": False, "val_every": 1000}
LR = {"finetune": 1e-3}
BATCH = 8


def run_config(method: str, seed: int, work: Path):
    from vlprompt.experiment import RunConfig

    train = {**TRAIN, **({"lr": LR[method]} if method in LR else {})}
    return RunConfig(method=method, backbone=BACKBONE, dataset="world-seg", dataset_options=dict(DATA), shots=0,
                     seed=seed, method_options={"head": dict(HEAD)}, train=train,
                     out=str(work / "runs" / f"{method}_seed{seed}"))


def parameter_counts(method_name: str) -> dict:
    from vlprompt.backbones.registry import create_backbone
    from vlprompt.data.registry import load_dataset
    from vlprompt.methods import create_method

    labels = load_dataset("world-seg", train_images=1, test_images=1, classes=DATA["classes"]).labels
    backbone = create_backbone(BACKBONE)
    method = create_method(method_name, backbone, labels, head=dict(HEAD))
    total = sum(p.numel() for p in backbone.visual.parameters())
    trained = {n: p.numel() for n, p in method.named_parameters() if p.requires_grad}
    head = sum(v for n, v in trained.items() if n.startswith("head."))
    side = sum(trained.values()) - head
    return {"backbone_params": total, "tuned_backbone_side": side, "head": head,
            "tuned_pct_of_backbone": 100.0 * side / total}


def _step_fn(method_name: str):
    from vlprompt.backbones.registry import create_backbone
    from vlprompt.data.registry import load_dataset
    from vlprompt.methods import create_method

    torch.manual_seed(0)
    labels = load_dataset("world-seg", train_images=1, test_images=1, classes=DATA["classes"]).labels
    method = create_method(method_name, create_backbone(BACKBONE), labels, head=dict(HEAD))
    method.train()
    params = method.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    size = method.backbone.preprocess.image_size
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(BATCH, 3, size, size, generator=generator),
             "label": torch.randint(labels.num_classes, (BATCH, size, size), generator=generator)}

    def step() -> None:
        loss = method(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_child(method_name: str, queue) -> None:
    torch.set_num_threads(1)
    step = _step_fn(method_name)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak mark: the peak below is the steps' own
    for _ in range(2):
        step()
    queue.put(max(_status_kib("VmHWM") - before, 0) / 1024)


def measure_memory(method_name: str) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_memory_child, args=(method_name, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def measure_times(methods: list[str], rounds: int = 5) -> dict[str, float]:
    torch.set_num_threads(1)
    steps = {m: _step_fn(m) for m in methods}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        for method, step in steps.items():
            started = time.perf_counter()
            step()
            times[method].append(time.perf_counter() - started)
    return {m: statistics.median(t) for m, t in times.items()}


def run_quality(methods: list[str], seeds: list[int], petl_seeds: list[int], work: Path) -> list[dict]:
    from vlprompt.experiment import run_experiment

    records_path = work / "records.jsonl"
    # priority order, so an interrupted run still answers the main question: the first seed of every method,
    # then the other seeds of the main rows
    plan = [(seeds[0], m) for m in methods] + [(s, m) for s in seeds[1:] for m in methods
                                                if m not in PETL or s in petl_seeds]
    done = set()
    if records_path.exists():
        done = {(r["method"], r["seed"]) for r in map(json.loads, records_path.read_text().splitlines()) if r}
    for seed, method in plan:
        if (method, seed) in done:
            continue
        started = time.perf_counter()
        record = run_experiment(run_config(method, seed, work))[0]
        row = {k: record.get(k) for k in ("method", "seed", "mIoU", "mAcc", "aAcc", "train_seconds", "steps")}
        row["wall_seconds"] = round(time.perf_counter() - started, 1)
        with open(records_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in records_path.read_text().splitlines() if line.strip()]
    latest = {(r["method"], r["seed"]): r for r in rows}
    return list(latest.values())


def summarise(rows: list[dict], methods: list[str]) -> dict:
    out = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method and r["mIoU"] is not None]
        if not mine:
            continue
        values = [100 * r["mIoU"] for r in mine]
        out[method] = {"mIoU_mean": statistics.mean(values),
                       "mIoU_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                       "aAcc_mean": statistics.mean(100 * r["aAcc"] for r in mine), "seeds": len(mine)}
    return out


def render_markdown(result: dict) -> str:
    lines = [f"# Segmentation on world-seg ({BACKBONE}, SETR-PUP head, {result['load']})", "",
             ("| method | mIoU % (mean ± std) | aAcc % | seeds | tuned backbone-side params (% of backbone) | head "
             "params | step time / finetune | step memory / finetune |"),
             "|---|---|---|---|---|---|---|---|"]
    for method in result["methods"]:
        quality = result["quality"].get(method)
        params = result["params"][method]
        cost = result["cost"].get(method, {})
        q = f"{quality['mIoU_mean']:.2f} ± {quality['mIoU_std']:.2f}" if quality else "—"
        a = f"{quality['aAcc_mean']:.2f}" if quality else "—"
        n = str(quality["seeds"]) if quality else "0"
        lines.append(f"| {method} | {q} | {a} | {n} | {params['tuned_backbone_side']:,} "
                     f"({params['tuned_pct_of_backbone']:.2f}%) | {params['head']:,} | "
                     f"{cost.get('time_ratio', float('nan')):.2f} | {cost.get('memory_ratio', float('nan')):.2f} |")
    lines += ["", ("Predicting background everywhere scores 10.2 % mIoU on this test split (the background IoU over "
                   "the 9 classes present); notes: segmentation_notes.md."),
              "", f"Data: {DATA}; train: {TRAIN} (lr: each method's default, finetune {LR['finetune']}); head: {HEAD}.",
              (f"Step time: median of interleaved rounds, batch {BATCH}, 1 thread; memory: peak-RSS rise during two steps in "
              "a fresh process. Ratios are to full fine-tuning measured in the same invocation.")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--petl-seeds", default="1", help="seeds of the PETL rows (bias, adapter, lora, ssf)")
    parser.add_argument("--work", default="/tmp/bench_seg")
    parser.add_argument("--skip-cost", action="store_true", help="reuse the cost figures of the last JSON")
    parser.add_argument("--load", help="the load during the runs, as `uptime` gave it (with --report-only: the runs "
                        "happened earlier, in several processes)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the JSON and table from the runs finished so far (records.jsonl), run nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared machine: one core per benchmark process
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load = f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at start"
    previous = json.loads((RESULTS / "segmentation.json").read_text()) if (RESULTS / "segmentation.json").exists() else {}
    cost_path = work / "cost.json"
    if args.skip_cost and cost_path.exists():
        cost = json.loads(cost_path.read_text())
    elif args.skip_cost and previous.get("cost"):
        cost = previous["cost"]
    else:
        compared = sorted(set(methods) | {"finetune"})
        times = measure_times(compared)
        memory = {m: measure_memory(m) for m in compared}
        cost = {m: {"step_seconds": times[m], "step_mib": memory[m], "time_ratio": times[m] / times["finetune"],
                    "memory_ratio": memory[m] / max(memory["finetune"], 1e-9)} for m in compared}
        cost_path.write_text(json.dumps(cost, indent=1))
        print(json.dumps(cost, indent=1), flush=True)
    params = {m: parameter_counts(m) for m in methods}
    if args.report_only:
        rows = [json.loads(line) for line in (work / "records.jsonl").read_text().splitlines() if line.strip()]
    else:
        rows = run_quality(methods, seeds, [int(s) for s in args.petl_seeds.split(",") if s], work)
    load = args.load or f"{load}; {os.getloadavg()[0]:.1f} at the end"
    result = {"load": load, "methods": methods, "seeds": seeds, "data": DATA, "train": TRAIN, "head": HEAD,
              "lr": LR, "params": params, "cost": cost, "quality": summarise(rows, methods), "runs": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "segmentation.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "segmentation.md").write_text(render_markdown(result))
    print(render_markdown(result))


if __name__ == "__main__":
    sys.exit(main())
