"""VPT's Table 1 on the offline world: transfer protocols and visual PETL baselines, 3 seeds, tuned parameters.

Runs the packaged sweep ``vpt_table`` (src/vlprompt/configs/sweeps/vpt_table.yaml: 14 methods x 3 world tasks,
one per VTAB-like group, x 3 seeds) through the library's own sweep runner, so every number is a run folder that
``vlprompt report`` reads too; then adds what the report does not know: each method's tuned parameters (built
once on the sweep's backbone, head excluded and included) as a percentage of the backbone, and the mean over the
task groups as VPT's Table 1 lays it out.

    python benchmarks/bench_vpt_table.py [--out runs/vpt_table]   # reuses finished runs of that folder
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# The sweep's tasks by VTAB group (natural / specialized / structured), one each.
GROUPS = {"world-paint": "natural", "world-texture": "specialized", "world-count": "structured"}


def tuned_parameters(config, entry, dataset: str) -> tuple[int, int, int]:
    """(tuned without head, tuned with head, backbone size) of one method as the sweep builds it."""
    from vlprompt.backbones.registry import create_backbone
    from vlprompt.data.registry import load_dataset
    from vlprompt.methods.base import create_method

    backbone = create_backbone(config.backbone)
    # the image tower: every method here trains on it alone (a CLIP's text tower is not used)
    backbone_size = sum(p.numel() for p in backbone.visual.parameters())
    task = load_dataset(dataset, **next(d.options for d in config.dataset_entries if d.dataset == dataset))
    method = create_method(entry.name, backbone, task.labels, **entry.method_options)
    tuned = {n: p.numel() for n, p in method.named_parameters() if p.requires_grad}
    head = sum(size for name, size in tuned.items() if name.split(".")[0] == "head")
    return sum(tuned.values()) - head, sum(tuned.values()), backbone_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/vpt_table", help="the sweep folder (finished runs are reused)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    from vlprompt.analysis.results import load_results
    from vlprompt.sweep import load_sweep_config, run_sweep
    from vlprompt.sweep.config import sweep_config_path

    config = load_sweep_config(sweep_config_path("vpt_table"))
    run_sweep(config, args.out, workers=args.workers)
    frame = load_results(args.out)
    frame = frame[frame["split"] == "test"]

    rows = []
    for entry in config.method_entries:
        label = entry.label or entry.name
        own = frame[frame["label"] == label]
        per_task = {}
        for dataset in GROUPS:
            values = [100 * v for v in own[own["dataset"] == dataset]["accuracy"]]
            per_task[dataset] = (statistics.mean(values), statistics.pstdev(values), len(values))
        tuned, tuned_head, backbone_size = tuned_parameters(config, entry, next(iter(GROUPS)))
        rows.append({
            "label": label,
            "method": entry.name,
            "method_options": entry.method_options,
            "tuned_parameters": tuned,
            "tuned_with_head": tuned_head,
            "tuned_percent": 100 * tuned / backbone_size,
            "tuned_with_head_percent": 100 * tuned_head / backbone_size,
            "accuracy": {d: {"mean": m, "std": s, "seeds": n} for d, (m, s, n) in per_task.items()},
            "group_mean": statistics.mean(m for m, _, _ in per_task.values()),
        })

    meta = {"sweep": "vpt_table", "backbone": config.backbone, "seeds": config.seeds, "train": config.train,
            "groups": GROUPS, "backbone_parameters": backbone_size, "machine": platform.processor() or "cpu"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vpt_table.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# VPT Table 1 on the offline world ({config.backbone}, seeds {config.seeds}, test accuracy %)",
        "",
        (f"Schedule: {json.dumps(config.train)}; tasks {', '.join(f'{d} ({g})' for d, g in GROUPS.items())}. "
         f"Tuned parameters as % of the image tower's {backbone_size:,} (head excluded / included)."),
        "",
        "| method | tuned % (no head) | tuned % (with head) | " + " | ".join(GROUPS) + " | mean of groups |",
        "|---|---|---|" + "---|" * len(GROUPS) + "---|",
    ]
    for row in rows:
        cells = [f"{row['accuracy'][d]['mean']:.1f} ± {row['accuracy'][d]['std']:.1f}" for d in GROUPS]
        lines.append(f"| {row['label']} | {row['tuned_percent']:.3f} | {row['tuned_with_head_percent']:.3f} | "
                     + " | ".join(cells) + f" | {row['group_mean']:.1f} |")
    (RESULTS / "vpt_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
