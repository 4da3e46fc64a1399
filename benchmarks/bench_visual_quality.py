"""Quality of the image-tower methods on the offline world: baselines, VPT, SPT with each initialiser.

Every run goes through the library's own experiment path (few-shot sampling, Trainer, evaluation on the test
split), so these are the numbers a user gets. Per-block NMI is logged during training of every VPT/SPT run
(``nmi_every``) and the mean over blocks is plotted over steps for VPT against SPT.

Reduced scale (2 shared CPU cores): few shots, few epochs, a small test split; the scale used is written into
the JSON and the table. Hyper-parameters are each method's own ``train_defaults`` (not swept), the same for
every task.

    python benchmarks/bench_visual_quality.py [--backbones world:mae,world:clip] [--seeds 1,2,3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

TASKS = {"world-object": 4, "world-count": 8}  # dataset -> shots per class
TEST_PER_CLASS = 20
EPOCHS = 10
NMI_EVERY = 5
ALL_INITS = ("kmeans", "mean_pool", "max_pool", "random_sample")
# (row label, method, method options); SPT-deep with every initialiser, the others once.
ROWS = [
    ("linear", "linear", {}),
    ("partial-1", "partial-k", {"k": 1}),
    ("finetune", "finetune", {}),
    ("vpt-shallow", "vpt-shallow", {}),
    ("vpt-deep", "vpt-deep", {}),
    ("spt-shallow kmeans", "spt-shallow", {"init": "kmeans"}),
    *[(f"spt-deep {init}", "spt-deep", {"init": init}) for init in ALL_INITS],
]
COMMON_TRAIN = {
    "epochs": EPOCHS,
    "batch_size": 32,
    "warmup_epochs": 1.0,
    "augment": "none",
    "progress": False,
    "log_every": 1000,
    "select": "last",
}


def train_settings(method: str) -> dict:
    """The method's own recommended optimizer settings (train_defaults), at the benchmark's reduced scale."""
    from vlprompt.methods import METHODS, import_all

    import_all()
    return {**METHODS.get(method).train_defaults, **COMMON_TRAIN}


def run_one(
    backbone: str, dataset: str, label: str, method: str, options: dict, seed: int, out: Path, cache_dir: Path
) -> dict:
    from vlprompt.artifacts.run_dir import RunDir
    from vlprompt.experiment import RunConfig, run_experiment

    options = dict(options)
    if method.startswith(("vpt", "spt")):
        options["nmi_every"] = NMI_EVERY
    run_dir = out / backbone.replace(":", "_") / dataset / label.replace(" ", "_") / f"seed{seed}"
    config = RunConfig(
        method=method,
        backbone=backbone,
        dataset=dataset,
        dataset_options={"test_per_class": TEST_PER_CLASS, "val_per_class": 0},
        method_options=options,
        shots=TASKS[dataset],
        seed=seed,
        train={**train_settings(method), "cache_dir": str(cache_dir)},
        out=str(run_dir),
    )
    started = time.perf_counter()
    # A finished run folder is reused (run_experiment returns its results; an interrupted one resumes).
    record = run_experiment(config)[0]
    nmi = []
    metrics = RunDir(run_dir).metrics
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            entry = json.loads(line)
            if "nmi/mean" in entry:
                nmi.append({k: v for k, v in entry.items() if k == "step" or k.startswith("nmi/")})
    return {
        "backbone": backbone,
        "dataset": dataset,
        "row": label,
        "seed": seed,
        "accuracy": record["accuracy"],
        "train_seconds": record["train_seconds"],
        "seconds": time.perf_counter() - started,
        "nmi": nmi,
    }


def summarise(runs: list[dict]) -> dict:
    table: dict = {}
    for run in runs:
        key = (run["backbone"], run["dataset"], run["row"])
        table.setdefault(key, []).append(run["accuracy"])
    return {
        f"{b}|{d}|{r}": {
            "mean": statistics.mean(a),
            "std": statistics.stdev(a) if len(a) > 1 else 0.0,
            "n": len(a),
        }
        for (b, d, r), a in table.items()
    }


def plot_nmi(runs: list[dict], path: Path) -> None:
    """Mean-over-blocks NMI over training steps, VPT vs SPT (k-means), averaged over seeds, one panel per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({(r["backbone"], r["dataset"]) for r in runs if r["nmi"]})
    fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(4.5 * max(len(pairs), 1), 3.4), squeeze=False)
    for axis, (backbone, dataset) in zip(axes[0], pairs):
        for row in ("vpt-shallow", "spt-shallow kmeans", "vpt-deep", "spt-deep kmeans"):
            traces = [
                r["nmi"] for r in runs if (r["backbone"], r["dataset"], r["row"]) == (backbone, dataset, row)
            ]
            traces = [t for t in traces if t]
            if not traces:
                continue
            length = min(len(t) for t in traces)
            steps = [traces[0][i]["step"] for i in range(length)]
            means = [statistics.mean(t[i]["nmi/mean"] for t in traces) for i in range(length)]
            axis.plot(steps, means, label=row, linestyle="-" if "deep" in row else "--")
        axis.set_title(f"{backbone} / {dataset}", fontsize=9)
        axis.set_xlabel("step")
        axis.set_ylabel("NMI (mean over blocks)")
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render_markdown(results: dict) -> str:
    backbones, datasets = results["backbones"], list(results["tasks"])
    header = "| method | " + " | ".join(
        f"{b} {d} ({results['tasks'][d]}-shot)" for b in backbones for d in datasets
    )
    lines = [
        (
            "# Image-tower methods on the offline world (accuracy %, mean ± std over seeds "
            f"{', '.join(map(str, results['seeds']))})"
        ),
        "",
        f"Reduced scale: {results['epochs']} epochs, {results['test_per_class']} test images per class, no "
        "augmentation; each method's own train_defaults, not swept: "
        + "; ".join(f"{k}: {v['optimizer']} lr {v['lr']}" for k, v in results["train"].items())
        + ".",
        "",
        "Backbone weights (content hash): "
        + ", ".join(f"{b} {h}" for b, h in results["weights_hash"].items())
        + ".",
        "",
        header + " |",
        "|---|" + "---|" * (len(backbones) * len(datasets)),
    ]
    for label, _, _ in ROWS:
        cells = []
        for b in backbones:
            for d in datasets:
                entry = results["summary"].get(f"{b}|{d}|{label}")
                if entry is None:
                    cells.append("—")
                else:
                    partial = "" if entry["n"] == len(results["seeds"]) else f" (n={entry['n']})"
                    cells.append(f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}{partial}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "NMI (mean over blocks) at the first log (after init) and at the end of training, mean over seeds:",
        "",
        "| backbone | dataset | method | NMI at step 0 | NMI at end |",
        "|---|---|---|---|---|",
    ]
    for key, value in results["nmi_summary"].items():
        b, d, r = key.split("|")
        lines.append(f"| {b} | {d} | {r} | {value['start']:.3e} | {value['end']:.3e} |")
    return "\n".join(lines) + "\n"


def nmi_summary(runs: list[dict]) -> dict:
    grouped: dict = {}
    for run in runs:
        if run["nmi"]:
            grouped.setdefault(f"{run['backbone']}|{run['dataset']}|{run['row']}", []).append(run["nmi"])
    return {
        k: {
            "start": statistics.mean(t[0]["nmi/mean"] for t in v),
            "end": statistics.mean(t[-1]["nmi/mean"] for t in v),
        }
        for k, v in grouped.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="world:mae,world:clip")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rows", default="", help="comma-separated row labels (default: all)")
    parser.add_argument(
        "--init-study",
        default="world:mae",
        help="backbones that get SPT-deep with every initialiser (the others: k-means only)",
    )
    parser.add_argument("--work", default="/tmp/vlprompt-bench-visual-quality")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="visual_quality")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    backbones = args.backbones.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = set(args.rows.split(",")) if args.rows else None
    init_study = set(args.init_study.split(","))
    work = Path(args.work)
    from vlprompt.backbones.registry import create_backbone

    weights = {b: create_backbone(b).weights_hash() for b in backbones}
    runs = []
    # Seeds outermost and results rewritten after every run: a cut-short run still leaves every row measured.
    for seed in seeds:
        for backbone in backbones:
            for dataset in TASKS:
                for label, method, options in ROWS:
                    if wanted and label not in wanted:
                        continue
                    if label.startswith("spt-deep") and "kmeans" not in label and backbone not in init_study:
                        continue
                    run = run_one(backbone, dataset, label, method, options, seed, work, work / "cache")
                    runs.append(run)
                    print(
                        f"{backbone} {dataset} {label} seed {seed}: {100 * run['accuracy']:.1f}% "
                        f"({run['seconds']:.1f} s)",
                        flush=True,
                    )
                    write_results(Path(args.out), args.name, backbones, weights, seeds, runs)
    print((Path(args.out) / f"{args.name}.md").read_text())


def write_results(
    out: Path, name: str, backbones: list[str], weights: dict, seeds: list[int], runs: list[dict]
) -> None:
    results = {
        "backbones": backbones,
        "weights_hash": weights,
        "tasks": TASKS,
        "seeds": seeds,
        "epochs": EPOCHS,
        "test_per_class": TEST_PER_CLASS,
        "train": {method: train_settings(method) for _, method, _ in ROWS},
        "runs": runs,
        "summary": summarise(runs),
        "nmi_summary": nmi_summary(runs),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(render_markdown(results))
    plot_nmi(runs, out / f"{name}_nmi.png")


if __name__ == "__main__":
    main()
