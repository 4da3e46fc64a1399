"""Running a planned sweep: skip finished runs, hand the rest to a launcher, record what happened.

Every run executes through ``execute_run(folder)`` whatever the launcher (this process, a local process pool,
Ray tasks): it reads the folder's spec, trains through ``run_experiment`` (which locks the folder and resumes or
refuses by its fingerprint) and writes ``error.txt`` on failure. A run counts as finished only when its
``results.json`` is written; a folder another live process is training is skipped with a message.
"""
from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from vlprompt.artifacts.files import ERROR_NAME, LOG_NAME
from vlprompt.artifacts.run_dir import INDEX_DIR, RunDir, RunLockedError
from vlprompt.core.errors import ConfigError, VlpromptError
from vlprompt.core.io import atomic_write_json, check_writable_dir
from vlprompt.experiment import run_config_from_dict
from vlprompt.sweep.config import SweepConfig, import_plugin
from vlprompt.sweep.plan import (
    FEATURES_DIR,
    RUNS_DIR,
    SELECTION_NAME,
    SUMMARY_NAME,
    RunSpec,
    final_specs,
    incompatibility,
    plan_sweep,
    select_best,
)

log = logging.getLogger(__name__)

RAN, FAILED, LOCKED = "ran", "failed", "locked"


def write_spec(folder: Path, spec: RunSpec, config: SweepConfig) -> Path:
    run = RunDir(folder)
    return atomic_write_json(run.spec, {
        "sweep": config.name,
        "stage": spec.stage,
        "protocol": spec.protocol,
        "variant": spec.variant,
        "label": spec.label,
        "group": spec.group,
        "point": spec.point,
        "imports": list(config.imports),
        "feature_cache": config.feature_cache,
        "run": spec.run,
    })


def execute_run(folder: str | Path) -> str:
    """Run the spec in ``folder``; returns RAN, FAILED (error.txt written when the disk allows) or LOCKED."""
    run_dir = RunDir(folder)
    folder = run_dir.path
    try:
        spec = run_dir.read_json(run_dir.spec)
        for module in spec.get("imports", []):
            import_plugin(module, "sweep.imports")
        from vlprompt.experiment import run_experiment

        # Sweep-wide folders are set here, not in the run's hashed config, so a moved sweep keeps its names.
        run = dict(spec["run"])
        run["index_dir"] = run.get("index_dir") or str(folder.parent.parent / INDEX_DIR)
        if spec.get("feature_cache") and not run["train"].get("cache_dir"):
            run["train"] = {**run["train"], "cache_dir": str(folder.parent.parent / FEATURES_DIR)}
        run_experiment(run_config_from_dict({**run, "out": str(folder)}))
    except RunLockedError as error:
        log.warning("skipping %s: %s", folder.name, error)
        return LOCKED
    except Exception as error:  # noqa: BLE001 - any failure of one run is recorded and must not stop the sweep
        # First line: what went wrong (the sweep summary shows it); then the traceback of anything unexpected.
        detail = "" if isinstance(error, VlpromptError) else "\n" + traceback.format_exc()
        first = " ".join(str(error).split()) or type(error).__name__
        if not run_dir.write_error(f"{type(error).__name__}: {first}\n{detail}"):
            log.error("run %s failed and its %s could not be written either", folder.name, ERROR_NAME)
        log.error("run %s failed: %s", folder.name, first)
        return FAILED
    run_dir.error.unlink(missing_ok=True)
    return RAN if run_dir.is_finished() else FAILED


def _first_error_line(run_dir: RunDir) -> str:
    try:
        lines = run_dir.error.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return f"unknown error ({ERROR_NAME} could not be written or read; see {LOG_NAME} if any)"
    return lines[0] if lines else "unknown error"


def _execute(specs: list[RunSpec], config: SweepConfig, runs_dir: Path, launcher, summary: dict) -> None:
    todo: list[Path] = []
    for spec in specs:
        run_dir = RunDir(runs_dir / spec.folder)
        summary["planned"] += 1
        reason = incompatibility(spec)
        if reason is not None:
            summary["skipped"].append({"run": spec.folder, "reason": reason})
            continue
        if run_dir.is_finished():
            summary["finished_before"].append(spec.folder)
            continue
        try:
            write_spec(run_dir.path, spec, config)
        except OSError as error:  # a full disk: this run fails, the sweep still reports
            summary["failed"].append({"run": spec.folder, "error": " ".join(str(error).split())})
            continue
        todo.append(run_dir.path)
    for name, status in launcher.run(todo).items():
        if status == RAN:
            summary["ran"].append(name)
        elif status == LOCKED:
            summary["skipped"].append({"run": name, "reason": "being trained by another process (its folder "
                                       "is locked); rerun the sweep once it has finished"})
        else:
            summary["failed"].append({"run": name, "error": _first_error_line(RunDir(runs_dir / name))})


def run_sweep(config: SweepConfig, out_dir: str | Path, workers: int = 1, launcher=None) -> dict:
    """Run every planned run not yet finished; returns (and writes to <out>/summary.json) what happened.

    ``launcher``: a Launcher (see launchers.py); default the local one with ``workers`` processes."""
    from vlprompt.sweep.launchers import LocalLauncher

    out = check_writable_dir(out_dir)
    if workers < 1:
        raise ConfigError(f"workers = {workers}: run at least one run at a time.")
    launcher = launcher or LocalLauncher(workers)
    started = time.perf_counter()
    specs = plan_sweep(config)
    runs_dir = out / RUNS_DIR
    summary: dict = {
        "sweep": config.name,
        "out_dir": str(out),
        "workers": workers,
        "launcher": launcher.name,
        "planned": 0,
        "finished_before": [],
        "ran": [],
        "failed": [],
        "skipped": [],
    }
    _execute(specs, config, runs_dir, launcher, summary)
    if any(spec.stage == "select" for spec in specs):
        chosen = select_best(specs, out)
        atomic_write_json(
            out / SELECTION_NAME,
            {
                group: None
                if best is None
                else {"folder": best.folder, "variant": best.variant, "point": best.point}
                for group, best in chosen.items()
            },
        )
        summary["vtab_selection"] = {g: (b.variant or "(no grid)") if b else None for g, b in chosen.items()}
        _execute(final_specs(config, chosen), config, runs_dir, launcher, summary)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / SUMMARY_NAME, summary)
    log.info(
        "sweep %s: %d planned, %d ran, %d already done, %d failed, %d skipped",
        config.name,
        summary["planned"],
        len(summary["ran"]),
        len(summary["finished_before"]),
        len(summary["failed"]),
        len(summary["skipped"]),
    )
    return summary


def format_summary(summary: dict) -> str:
    """A few lines for the terminal: counts, then every failed and skipped run with its reason."""
    head = (
        f"sweep '{summary['sweep']}' in {summary['out_dir']}: {summary['planned']} runs planned, "
        f"{len(summary['ran'])} ran, {len(summary['finished_before'])} already finished, "
        f"{len(summary['failed'])} failed, {len(summary['skipped'])} skipped ({summary.get('seconds', 0)} s)"
    )
    lines = [head]
    for group, variant in summary.get("vtab_selection", {}).items():
        lines.append(f"  VTAB selection {group.split('|')[0]} / {group.split('|')[-1]}: {variant}")
    lines += [
        f"  FAILED  {f['run']}: {f['error']} (see {RUNS_DIR}/{f['run']}/{ERROR_NAME})"
        for f in summary["failed"]
    ]
    lines += [f"  skipped {s['run']}: {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines)
