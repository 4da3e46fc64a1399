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
from vlprompt.artifacts.files import RESULTS_NAME
from vlprompt.core.errors import VlpromptError
from vlprompt.core.io import atomic_write_json, atomic_write_text, check_writable_dir
from vlprompt.experiment import RunConfig, run_experiment
from vlprompt.methods import METHODS, list_methods

log = logging.getLogger(__name__)

DEMO_SHOTS = 16
DEMO_SEED = 1


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


def percent_table(records: list[dict]) -> str:
    """Method, test accuracy in % and training seconds: what a reader of the demo compares."""
    def number(value, scale: float, digits: int) -> str | None:
        return None if value is None else f"{scale * value:.{digits}f}"

    rows = [{"method": r["method"], "accuracy (%)": number(r.get("accuracy"), 100, 2),
             "train s": number(r.get("train_seconds"), 1, 1)} for r in records]
    return format_table(rows, ("method", "accuracy (%)", "train s"))


def demo_report(out: Path, records: list[dict], defaults: dict, total: float) -> str:
    """report.md: the task, the % table, and the plots of the sweep report written over ``out/runs`` into
    ``out/report`` (every run there, with CSVs and a trace of each number to its run folder)."""
    from vlprompt.analysis.report import write_report

    written = write_report(out / "runs", out / "report")
    figures = sorted(name for name in written if name.endswith(".png"))
    full = written["report.md"].read_text(encoding="utf-8")
    note = next((line for line in full.splitlines() if line.startswith("Tables only, no plots")), "")
    lines = [
        "# vlprompt demo", "",
        (f"Task: `{defaults['dataset']}` {defaults.get('options', {})} on `{defaults['backbone']}`, {DEMO_SHOTS} "
         f"shots, seed {DEMO_SEED}; test accuracy in %. Total time {total:.1f} s."), "",
        percent_table(records), "",
        *(f"![{name}](report/{name})\n" for name in figures),
        *([note, ""] if note else []),
        ("The full report of every run under `runs/` (tables as CSV, each number traced to its run folder): "
         "[report/report.md](report/report.md)."),
    ]
    return "\n".join(lines) + "\n"


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
    report = demo_report(out, records, defaults, total)
    atomic_write_text(out / "report.md", report)
    print(percent_table(records))
    print(f"\nwrote {out / RESULTS_NAME}, {out / 'report.md'} and {out / 'report'}/ in {total:.1f} s")
    return records
