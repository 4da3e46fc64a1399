"""A sweep-like tree of run folders covering every report table and its edge cases, built from a fixed
generator; tests/data/report_golden/ holds the report the Cell/Row/Table implementation wrote for it (before
the move to pandas), so the pandas tables are checked number for number against it."""

from __future__ import annotations

import json
import random
from pathlib import Path

GOLDEN = Path(__file__).parent / "data" / "report_golden"


def _run(
    root: Path,
    name: str,
    records: list[dict],
    backbone: str,
    spec: dict | None = None,
    metrics: list[dict] | None = None,
    config: bool = True,
) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps([{"backbone": backbone, **r} for r in records]))
    if config:
        (folder / "config.json").write_text(
            json.dumps({"backbone_id": backbone, "vlprompt_version": "0.1.0"})
        )
    if spec is not None:
        (folder / "sweep.json").write_text(json.dumps({"stage": "run", "variant": "", **spec}))
    if metrics:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def _nmi(offset: float) -> list[dict]:
    return [
        {"step": s, "nmi/block0": offset + 0.01 * s, "nmi/block1": offset / 2 + 0.02 * s} for s in (0, 4, 8)
    ]


def build_sweep_runs(root: Path) -> Path:
    """Few-shot (labels from sweep.json, 'all' shots, a missing accuracy), base-to-new (a class-tied head,
    new names seen), shift (a method missing a target), VTAB final and select stages (a missing task), NMI
    metrics, and a results.json without config.json (skipped). One backbone."""
    rng = random.Random(12)
    backbone = "world:clip"
    for method, label in (
        ("coop", "coop"),
        ("coop", "coop ctx=4"),
        ("linear", "linear"),
        ("vpt-deep", "vpt-deep"),
        ("zeroshot", "zeroshot"),
    ):
        for shots in (1, 4, 16, 0):
            for seed in (1, 2, 3):
                if method == "linear" and shots == 0 and seed == 3:
                    continue  # an unfinished run: the cell has two seeds
                accuracy = None if (label == "coop ctx=4" and shots == 4 and seed == 2) else rng.random()
                record = {
                    "method": method,
                    "protocol": "fewshot",
                    "dataset": "world-paint",
                    "shots": shots,
                    "seed": seed,
                    "split": "test",
                    "accuracy": accuracy,
                }
                metrics = _nmi(0.1 * seed) if method == "vpt-deep" and shots in (1, 4) else None
                _run(
                    root,
                    f"runs/fs-{label.replace(' ', '_')}-{shots}-{seed}",
                    [record],
                    backbone,
                    {"label": label},
                    metrics,
                )
    for method in ("cocoop", "coop", "linear", "zeroshot"):
        for seed in (1, 2):
            common = {
                "method": method,
                "protocol": "base2new",
                "shots": 16,
                "seed": seed,
                "saw_new_classnames": method == "zeroshot" and seed == 2,
            }
            new = None if method == "linear" else rng.random()
            _run(
                root,
                f"runs/b2n-{method}-{seed}",
                [
                    {**common, "dataset": "world-object/base", "split": "base", "accuracy": rng.random()},
                    {**common, "dataset": "world-object/new", "split": "new", "accuracy": new},
                ],
                backbone,
                {"label": method},
            )
    targets = ("world-object-sketch", "world-object-cartoon", "world-object-neon")
    for method in ("coop", "vpt-deep"):
        for seed in (1, 2, 3):
            common = {"method": method, "protocol": "shift", "shots": 8, "seed": seed}
            records = [
                {**common, "dataset": "world-object-photo", "split": "source", "accuracy": rng.random()}
            ]
            records += [
                {
                    **common,
                    "dataset": t,
                    "split": "target",
                    "source": "world-object-photo",
                    "accuracy": rng.random(),
                }
                for t in targets
                if not (method == "vpt-deep" and t == targets[2])
            ]
            _run(
                root,
                f"runs/shift-{method}-{seed}",
                records,
                backbone,
                {"label": method},
                _nmi(0.3) if method == "vpt-deep" else None,
            )
    tasks = ("cifar", "dtd", "eurosat", "resisc45", "clevr_count", "dsprites_loc")
    for method in ("vpt-deep", "linear"):
        for task in tasks:
            if method == "linear" and task == "resisc45":
                continue
            for seed in (1, 2, 3):
                record = {
                    "method": method,
                    "protocol": "fewshot",
                    "dataset": f"vtab:{task}",
                    "shots": 0,
                    "seed": seed,
                    "split": "test",
                    "accuracy": rng.random(),
                }
                _run(
                    root,
                    f"runs/vtab-final-{method}-{task}-{seed}",
                    [record],
                    backbone,
                    {"label": method, "stage": "final", "variant": "lr=0.01"},
                )
            _run(
                root,
                f"runs/vtab-select-{method}-{task}",
                [{**record, "seed": 1, "split": "val"}],
                backbone,
                {"label": method, "stage": "select", "variant": "lr=0.1"},
            )
    _run(root, "summary", [{"method": "coop", "accuracy": 0.5}], backbone, config=False)
    return root


def build_mixed_runs(root: Path) -> Path:
    """Two backbones (one table each) and VTAB-style final runs of non-VTAB task names; plain
    run folders without sweep.json (label = method, stage = run)."""
    rng = random.Random(7)
    for backbone in ("world:clip", "open_clip:ViT-B-16@openai"):
        tag = backbone.split(":")[0]
        for method in ("coop", "kgcoop"):
            for seed in (1, 2):
                for shots in (2, 8):
                    _run(
                        root,
                        f"{tag}/fs-{method}-{shots}-{seed}",
                        [
                            {
                                "method": method,
                                "protocol": "fewshot",
                                "dataset": "world-object",
                                "shots": shots,
                                "seed": seed,
                                "split": "test",
                                "accuracy": rng.random(),
                            }
                        ],
                        backbone,
                    )
                for task in ("mytask-b", "mytask-a"):
                    _run(
                        root,
                        f"{tag}/final-{method}-{task}-{seed}",
                        [
                            {
                                "method": method,
                                "protocol": "fewshot",
                                "dataset": f"folder:/data/{task}/",
                                "shots": 0,
                                "seed": seed,
                                "split": "test",
                                "accuracy": rng.random(),
                            }
                        ],
                        backbone,
                        {"label": method, "stage": "final"},
                    )
    return root
