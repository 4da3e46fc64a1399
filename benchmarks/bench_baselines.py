"""Quality of the 2022-2024 baselines (IVLP, MaPLe, PromptSRC, CLIP-LoRA, Tip-Adapter(-F), CLAP) on the world.

Base-to-new on world-object (16 shots) and few-shot on world-paint, with zero-shot CLIP and CoOp as references,
through the library's experiment path (``bench_text_quality.run_one``). Each method runs its own
``train_defaults`` except for the reductions in ``SCHEDULES`` (2 shared CPU cores): those are written into the
JSON and the table. Every finished run is appended to ``<work>/records.jsonl`` and the JSON/markdown are rebuilt
from it, so an interrupted benchmark keeps its finished cells, a rerun skips them, and two invocations with
different ``--methods`` can run side by side.

    python benchmarks/bench_baselines.py [--methods ivlp,maple] [--seeds 1,2,3] [--paint-shots 16]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_text_quality import COMMON_TRAIN, _cell, run_one, train_settings

METHODS = ("zeroshot", "coop", "ivlp", "maple", "promptsrc", "clip-lora", "tip-adapter", "tip-adapter-f", "clap")
B2N_DATASET, FEWSHOT_DATASET = "world-object", "world-paint"
# a validation split for Tip-Adapter's alpha/beta search (the others keep their last epoch and never read it)
SPLITS = {"val_per_class": 4, "test_per_class": 20}
# (train overrides, method options, why): what differs from each method's train_defaults besides COMMON_TRAIN
SCHEDULES: dict[str, tuple[dict, dict, str]] = {
    "coop": ({"epochs": 20}, {}, "20 epochs of batch 32 (official 50), as in text_quality.md"),
    "ivlp": ({}, {}, "official 5 epochs, batch 4"),
    "maple": ({}, {}, "official 5 epochs, batch 4"),
    "promptsrc": ({"epochs": 5}, {"gpa_mean": 3.75, "gpa_std": 1.0},
                  "5 epochs (official 20); GPA mean 3.75 (official 15 of 20, same fraction), std 1"),
    "clip-lora": ({"epochs": 10, "lr": 0.01}, {},
                  "10 epochs of batch 32 at lr 0.01 (official 500 x shots = 8,000 steps at 2e-4; the demo's lr)"),
    "tip-adapter": ({}, {}, "official (10 augmented views, alpha/beta searched on the validation split)"),
    "tip-adapter-f": ({}, {}, "official 20 epochs on 10 cached augmented views"),
    "clap": ({}, {}, "official 300 epochs on 20 cached augmented views"),
}
# the cache methods read K augmented views of the shots by definition: they keep their augmentation
KEEP_AUGMENT = ("tip-adapter", "tip-adapter-f", "clap")


def settings(method: str) -> tuple[dict, dict]:
    train_overrides, options, _ = SCHEDULES.get(method, ({}, {}, ""))
    base = train_settings(method, 1)  # train_defaults + COMMON_TRAIN (epochs replaced below)
    from vlprompt.methods import METHODS as REGISTRY

    defaults = REGISTRY.get(method).train_defaults
    base["epochs"] = defaults.get("epochs", 1)
    if method in KEEP_AUGMENT:
        base["augment"] = defaults.get("augment", COMMON_TRAIN["augment"])
    return {**base, **train_overrides, "val_every": 10_000}, dict(options)


def load_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(records: list[dict]) -> dict:
    """Mean ± std over seeds per cell; HM from the averaged base and new accuracies (as bench_text_quality), plus
    the mean ± std of the per-seed HM."""
    cells: dict[str, list[float]] = {}
    per_seed: dict[str, dict[int, dict[str, float]]] = {}
    for r in records:
        if r["accuracy"] is None:
            continue
        cells.setdefault(f"{r['protocol']}|{r['shots']}|{r['method']}|{r['split']}", []).append(r["accuracy"])
        if r["protocol"] == "base2new":
            per_seed.setdefault(f"base2new|{r['shots']}|{r['method']}", {}).setdefault(r["seed"], {})[r["split"]] = (
                r["accuracy"])
    summary = {key: _stats(values) for key, values in cells.items()}
    for stem, seeds in per_seed.items():
        if f"{stem}|base" in summary and f"{stem}|new" in summary:
            base, new = summary[f"{stem}|base"]["mean"], summary[f"{stem}|new"]["mean"]
            summary[f"{stem}|hm"] = {"mean": 2 * base * new / (base + new) if base + new else 0.0, "std": None,
                                     "n": min(summary[f"{stem}|base"]["n"], summary[f"{stem}|new"]["n"])}
        hms = [2 * s["base"] * s["new"] / (s["base"] + s["new"]) for s in seeds.values() if "base" in s and "new" in s]
        if hms:
            summary[f"{stem}|hm_per_seed"] = _stats(hms)
    return summary


def render_markdown(results: dict) -> str:
    s, seeds = results["summary"], len(results["seeds"])
    methods = [m for m in METHODS if any(r["method"] == m for r in results["records"])]
    b2n = results["base2new_shots"]
    lines = [
        f"# Baselines on the offline world (accuracy %, mean ± std over seeds {', '.join(map(str, results['seeds']))})",
        "",
        (f"Backbone `{results['backbone']}`, {SPLITS['test_per_class']} test images per class, "
         f"min(shots, {SPLITS['val_per_class']}) validation images per class (read only by Tip-Adapter's α/β search), "
         "last epoch kept, no augmentation except for the cache methods' augmented views. Cells with fewer seeds "
         "say n. Generated by `benchmarks/bench_baselines.py`; notes in `baselines_notes.md`."),
        "",
        "Reduced schedules (each method's train_defaults otherwise):",
        "",
    ]
    lines += [f"- `{m}`: {results['schedules'][m]}" for m in methods if results["schedules"].get(m)]
    lines += ["", f"## Base-to-new, {B2N_DATASET}, {b2n} shots (12 base / 12 new classes)", "",
              "| method | base | new | HM (of means) | HM (per seed) |", "|---|---|---|---|---|"]
    for m in methods:
        cells = [_cell(s, f"base2new|{b2n}|{m}|{split}", seeds) for split in ("base", "new", "hm", "hm_per_seed")]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    notes = sorted({f"`{r['method']}`: {r['note']}" for r in results["records"] if r.get("note")})
    if notes:
        lines += ["", "A dash under new: " + "; ".join(notes) + "."]
    shots = results["fewshot_shots"]
    lines += ["", f"## Few-shot, {FEWSHOT_DATASET} (8 colour classes)", "",
              "| method | " + " | ".join(f"{k} shots" for k in shots) + " |", "|---|" + "---|" * len(shots)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_cell(s, f"fewshot|{k}|{m}|test", seeds) for k in shots) + " |")
    return "\n".join(lines) + "\n"


def write_results(args, out: Path, records_path: Path) -> None:
    from vlprompt.core.io import atomic_write_json, atomic_write_text

    records = load_records(records_path)
    results = {
        "backbone": args.backbone, "seeds": [int(x) for x in args.seeds.split(",")],
        "base2new_shots": args.base2new_shots, "fewshot_shots": [int(k) for k in args.paint_shots.split(",")],
        "splits": SPLITS, "common_train": COMMON_TRAIN,
        "schedules": {m: SCHEDULES[m][2] for m in METHODS if m in SCHEDULES},
        "records": records, "summary": summarise(records),
    }
    atomic_write_json(out / "baselines_quality.json", results)
    atomic_write_text(out / "baselines_quality.md", render_markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="world:clip")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--base2new-shots", type=int, default=16)
    parser.add_argument("--paint-shots", default="16")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--protocols", default="base2new,fewshot")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--work", default="/tmp/vlprompt_baselines", help="run folders, feature cache, records")
    parser.add_argument("--render-only", action="store_true", help="rebuild the JSON/markdown from the records")
    args = parser.parse_args()
    import torch

    from vlprompt.methods import METHODS as REGISTRY
    from vlprompt.methods import import_all

    torch.set_num_threads(1)
    import_all()
    out, work = Path(args.out), Path(args.work)
    records_path = work / "records.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        write_results(args, out, records_path)
        return
    missing = [m for m in args.methods.split(",") if m not in REGISTRY.names()]
    if missing:
        print(f"not registered here, skipped: {missing}", flush=True)
    methods = [m for m in args.methods.split(",") if m not in missing]
    plan = [("base2new", B2N_DATASET, args.base2new_shots)] if "base2new" in args.protocols else []
    plan += [("fewshot", FEWSHOT_DATASET, int(k)) for k in args.paint_shots.split(",") if "fewshot" in args.protocols]
    for protocol, dataset, shots in plan:  # base-to-new first: it carries the papers' comparison
        for seed in [int(x) for x in args.seeds.split(",")]:
            for method in methods:
                done = {(r["method"], r["protocol"], r["shots"], r["seed"]) for r in load_records(records_path)}
                if (method, protocol, shots, seed) in done:
                    continue
                train, options = settings(method)
                started = time.perf_counter()
                new = run_one(args, method, protocol, shots, seed, work, dataset=dataset, splits=SPLITS,
                              method_options=options, train=train)
                with records_path.open("a") as handle:
                    handle.write("".join(json.dumps(r) + "\n" for r in new))
                write_results(args, out, records_path)
                print(f"{protocol} {dataset} {shots}-shot seed {seed} {method} ({time.perf_counter() - started:.0f} s): "
                      + ", ".join(f"{r['split']}={r['accuracy']}" for r in new), flush=True)


if __name__ == "__main__":
    main()
