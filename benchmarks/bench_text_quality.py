"""Quality of the CLIP text-prompt methods on the offline world: few-shot, base-to-new, style shift.

Every run goes through the library's experiment path (few-shot index files, the Trainer with cached image
features, evaluation on the test split), so these are the numbers a user gets. Hyper-parameters are each
method's own ``train_defaults`` (not swept) with the epoch count reduced for the 2 shared CPU cores; the scale
is written into the JSON and the tables. Results are rewritten after every run, so an interrupted benchmark
leaves its finished cells (marked with their seed count n).

    python benchmarks/bench_text_quality.py [--backbone world:clip] [--seeds 1,2,3] [--shots 1,4,16]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

METHODS = ("zeroshot", "linear", "coop", "cocoop", "prograd", "kgcoop", "mocoop")
DATASET = "world-object"
SHIFT_SOURCE = "world-object-photo"
SHIFT_TARGETS = ("world-object-cartoon", "world-object-painting", "world-object-pixel", "world-object-neon",
                 "world-object-sketch", "world-object-blueprint")
SPLITS = {"val_per_class": 0, "test_per_class": 20}
COMMON_TRAIN = {"progress": False, "log_every": 1000, "select": "last", "augment": "none"}


def train_settings(method: str, epochs: int) -> dict:
    from vlprompt.methods import METHODS as REGISTRY
    from vlprompt.methods import import_all

    import_all()
    defaults = dict(REGISTRY.get(method).train_defaults)
    # CoCoOp's recipe is few epochs of small batches; keep its ratio to the others' schedule.
    scaled = max(1, epochs // 5) if method == "cocoop" else epochs
    return {**defaults, **COMMON_TRAIN, "epochs": scaled}


def run_one(args, method: str, protocol: str, shots: int, seed: int, out: Path, *, dataset: str | None = None,
            splits: dict | None = None, method_options: dict | None = None, train: dict | None = None) -> list[dict]:
    """One run through the experiment path; the keyword arguments let other benchmarks (bench_baselines.py)
    change the dataset, the split sizes, the method options and the training settings."""
    from vlprompt.experiment import RunConfig, run_experiment

    dataset = dataset or (SHIFT_SOURCE if protocol == "shift" else DATASET)
    splits = dict(SPLITS if splits is None else splits)
    targets = [{"dataset": t, "options": dict(splits)} for t in SHIFT_TARGETS] if protocol == "shift" else []
    run_dir = out / "runs" / protocol / dataset / f"{shots}shot" / method / f"seed{seed}"
    settings = train_settings(method, args.epochs) if train is None else train
    config = RunConfig(
        method=method,
        backbone=args.backbone,
        dataset=dataset,
        dataset_options=splits,
        method_options=dict(method_options or {}),
        protocol=protocol,
        shots=shots,
        seed=seed,
        targets=targets,
        train={**settings, "cache_dir": str(out / "feature_cache")},
        out=str(run_dir),
    )
    started = time.perf_counter()
    records = run_experiment(config)
    seconds = time.perf_counter() - started
    return [{**r, "method": method, "protocol": protocol, "shots": shots, "seed": seed, "seconds": seconds}
            for r in records]


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(records: list[dict]) -> dict:
    """Mean ± std over seeds per cell; base-to-new HM from the averaged base and new accuracies."""
    cells: dict[str, list[float]] = {}
    for r in records:
        if r["accuracy"] is None:
            continue
        split = r["split"] if r["protocol"] != "shift" else ("source" if r["split"] == "source" else r["dataset"])
        cells.setdefault(f"{r['protocol']}|{r['shots']}|{r['method']}|{split}", []).append(r["accuracy"])
    summary = {key: _stats(values) for key, values in cells.items()}
    for key in [k for k in summary if k.startswith("base2new|") and k.endswith("|base")]:
        stem = key[: -len("|base")]
        if f"{stem}|new" in summary:
            base, new = summary[key]["mean"], summary[f"{stem}|new"]["mean"]
            summary[f"{stem}|hm"] = {"mean": 2 * base * new / (base + new) if base + new else 0.0, "std": None,
                                     "n": min(summary[key]["n"], summary[f"{stem}|new"]["n"])}
    for method in METHODS:  # mean over the shift targets, per seed, then over seeds
        per_seed: dict[int, list[float]] = {}
        for r in records:
            if r["protocol"] == "shift" and r["method"] == method and r["split"] == "target":
                per_seed.setdefault(r["seed"], []).append(r["accuracy"])
        complete = [statistics.mean(v) for v in per_seed.values() if len(v) == len(SHIFT_TARGETS)]
        if complete:
            shots = next(r["shots"] for r in records if r["protocol"] == "shift")
            summary[f"shift|{shots}|{method}|targets-mean"] = _stats(complete)
    return summary


def _cell(summary: dict, key: str, seeds: int) -> str:
    entry = summary.get(key)
    if entry is None:
        return "—"
    partial = "" if entry["n"] == seeds else f" (n={entry['n']})"
    std = "" if entry["std"] is None or entry["n"] < 2 else f" ± {100 * entry['std']:.1f}"
    return f"{100 * entry['mean']:.1f}{std}{partial}"


def render_markdown(results: dict) -> str:
    s, seeds = results["summary"], len(results["seeds"])
    lines = [
        (f"# CLIP text-prompt methods on the offline world (accuracy %, mean ± std over seeds "
        f"{', '.join(map(str, results['seeds']))})"),
        "",
        (f"Backbone `{results['backbone']}`. Reduced scale: {results['epochs']} epochs for the CoOp family "
        f"(CoCoOp {max(1, results['epochs'] // 5)}), {SPLITS['test_per_class']} test images per class, no validation "
        "split (last epoch kept), cached exact image features, each method's own train_defaults otherwise. "
        "Generated by `benchmarks/bench_text_quality.py`."),
        "",
        f"## Few-shot, {DATASET} (24 classes)",
        "",
        "| method | " + " | ".join(f"{k} shots" for k in results["shots"]) + " |",
        "|---|" + "---|" * len(results["shots"]),
    ]
    for method in METHODS:
        cells = [_cell(s, f"fewshot|{k}|{method}|test", seeds) for k in results["shots"]]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    b2n = results["base2new_shots"]
    lines += ["", f"## Base-to-new, {DATASET}, {b2n} shots (HM of the averaged base and new accuracies)", "",
              "| method | base | new | HM |", "|---|---|---|---|"]
    for method in METHODS:
        cells = [_cell(s, f"base2new|{b2n}|{method}|{split}", seeds) for split in ("base", "new", "hm")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"## Style shift: train on {SHIFT_SOURCE} ({b2n} shots), test on the other styles", "",
              "| method | photo (source) | " + " | ".join(t.rsplit("-", 1)[1] for t in SHIFT_TARGETS)
              + " | targets mean |", "|---|---|" + "---|" * (len(SHIFT_TARGETS) + 1)]
    for method in METHODS:
        cells = [_cell(s, f"shift|{b2n}|{method}|source", seeds)]
        cells += [_cell(s, f"shift|{b2n}|{method}|{t}", seeds) for t in SHIFT_TARGETS]
        cells.append(_cell(s, f"shift|{b2n}|{method}|targets-mean", seeds))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="world:clip")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--shots", default="1,4,16")
    parser.add_argument("--base2new-shots", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--protocols", default="fewshot,base2new,shift")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--work", default="/tmp/vlprompt_text_quality", help="run folders and the feature cache")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    shots = [int(k) for k in args.shots.split(",")]
    methods = args.methods.split(",")
    protocols = args.protocols.split(",")
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    started = time.perf_counter()
    for seed in seeds:  # seeds outermost: an interrupted run still has complete seeds
        # base-to-new first: it carries the comparison the papers make (new-class accuracy after prompt learning)
        plan = [("base2new", args.base2new_shots)] if "base2new" in protocols else []
        plan += [("fewshot", k) for k in shots if "fewshot" in protocols]
        plan += [("shift", args.base2new_shots)] if "shift" in protocols else []
        for protocol, k in plan:
            for method in methods:
                new = run_one(args, method, protocol, k, seed, work)
                records += new
                results = {
                    "backbone": args.backbone, "seeds": seeds, "shots": shots, "base2new_shots": args.base2new_shots,
                    "epochs": args.epochs, "splits": SPLITS, "seconds": time.perf_counter() - started,
                    "records": records, "summary": summarise(records),
                }
                (out / "text_quality.json").write_text(json.dumps(results, indent=2) + "\n")
                (out / "text_quality.md").write_text(render_markdown(results))
                print(f"seed {seed} {protocol} {k}-shot {method}: "
                      + ", ".join(f"{r['split']}={r['accuracy']}" for r in new), flush=True)
    print((out / "text_quality.md").read_text())


if __name__ == "__main__":
    main()
