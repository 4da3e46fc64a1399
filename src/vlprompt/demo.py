"""`vlprompt demo`: every registered method on the offline world's default few-shot task (16 shots, seed 1)."""
from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from vlprompt.analysis.markdown import format_table
from vlprompt.errors import VlpromptError
from vlprompt.experiment import RunConfig, run_experiment
from vlprompt.io_utils import atomic_write_json, atomic_write_text, check_writable_dir
from vlprompt.methods import METHODS, list_methods
from vlprompt.run_dir import RESULTS_NAME

log = logging.getLogger(__name__)

DEMO_SHOTS = 16
DEMO_SEED = 1
COLUMNS = ("method", "backbone", "dataset", "shots", "seed", "split", "accuracy", "train_seconds")


def world_defaults() -> dict:
    """The default task and backbone chosen (and measured) by the world's pretraining scripts."""
    text = resources.files("vlprompt.data.world").joinpath("defaults.json").read_text(encoding="utf-8")
    return json.loads(text)


@contextmanager
def _epoch_lines(enabled: bool):
    """Show the trainer's per-epoch INFO line on stdout while the demo runs (tqdm bars are off there, and off a
    terminal nothing else would move for minutes under load)."""
    trainer_log = logging.getLogger("vlprompt.train.trainer")
    if not enabled:
        yield
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("      %(message)s"))
    saved = trainer_log.level, trainer_log.propagate
    trainer_log.addHandler(handler)
    trainer_log.setLevel(logging.INFO)
    trainer_log.propagate = False
    try:
        yield
    finally:
        trainer_log.removeHandler(handler)
        trainer_log.setLevel(saved[0])
        trainer_log.propagate = saved[1]


def run_demo(out: str | Path, methods: list[str] | None = None, progress: bool = True) -> list[dict]:
    """Run ``methods`` (default: all) on the world's default task; ``progress`` prints a "[k/N] method" line
    before each method and one line per training epoch."""
    out = check_writable_dir(out)
    defaults = world_defaults()
    available = list_methods()  # imports every method module, so names given by the caller resolve too
    names = methods or available
    for name in names:
        METHODS.get(name)
    records: list[dict] = []
    started = time.perf_counter()
    for index, name in enumerate(names, 1):
        config = RunConfig(
            method=name,
            backbone=defaults["backbone"],
            dataset=defaults["dataset"],
            dataset_options=dict(defaults.get("options", {})),
            method_options=dict(defaults.get("method_options", {}).get(name, {})),
            shots=DEMO_SHOTS,
            seed=DEMO_SEED,
            train={**defaults.get("train", {}), **defaults.get("method_train", {}).get(name, {}), "progress": False},
            out=str(out / "runs" / name),
        )
        if progress:
            print(f"[{index}/{len(names)} methods] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            with _epoch_lines(progress):
                records.extend(run_experiment(config))
        except VlpromptError as error:
            raise VlpromptError(f"demo: method '{name}' failed: {error}") from None
        print(f"  {name:<20} {records[-1]['accuracy']:.4f}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    total = time.perf_counter() - started
    atomic_write_json(out / RESULTS_NAME, records)
    table = format_table(records, COLUMNS)
    atomic_write_text(
        out / "report.md",
        f"# vlprompt demo\n\nTask: `{defaults['dataset']}` {defaults.get('options', {})} on `{defaults['backbone']}`, "
        f"{DEMO_SHOTS} shots, seed {DEMO_SEED}; accuracy on the test split. Total time {total:.1f} s.\n\n{table}\n",
    )
    print(table)
    print(f"\nwrote {out / RESULTS_NAME} and {out / 'report.md'} in {total:.1f} s")
    return records
