"""Sweeps: a grid of runs (methods x datasets x protocols x shots x seeds x hyper-parameters), a folder each.

A sweep is planned into ``RunSpec``s before anything trains (plan.py). Every run gets a stable folder name
(readable parts plus a short hash of its RunConfig), so re-running a sweep skips the runs whose results.json
exists and resumes the interrupted ones (the trainer's resume state lives in the run folder). A launcher
(launchers.py) executes the runs: in this process, as a local process pool, or as Ray tasks. A failing run writes
``error.txt`` in its folder and the others go on (runner.py).

VTAB-1k is a sweep-level protocol in two stages. *select*: every hyper-parameter combination trains on
train800 and is scored on val200, through a task view whose test split IS the val split and which holds no
reference to the real test split (``data/vtab_stages.selection_view``); the best combination is chosen from
those scores only. *final*: the chosen combination trains on train800val200 and is tested on test, over
several seeds.
"""
from vlprompt.data.vtab_stages import (
    VTAB_FINAL_DATASET,
    VTAB_SELECT_DATASET,
    final_view,
    selection_view,
    union,
)
from vlprompt.run_dir import ERROR_NAME, LOG_NAME, SPEC_NAME
from vlprompt.sweep.config import DatasetEntry, MethodEntry, SweepConfig, VtabConfig, load_sweep_config
from vlprompt.sweep.launchers import LAUNCHERS, LocalLauncher, RayLauncher, create_launcher
from vlprompt.sweep.plan import (
    RUNS_DIR,
    SELECTION_NAME,
    SUMMARY_NAME,
    RunSpec,
    final_specs,
    incompatibility,
    plan_sweep,
    run_folder_name,
    run_hash,
    select_best,
)
from vlprompt.sweep.runner import execute_run, format_summary, run_sweep

__all__ = [
    "ERROR_NAME", "LAUNCHERS", "LOG_NAME", "RUNS_DIR", "SELECTION_NAME", "SPEC_NAME", "SUMMARY_NAME",
    "VTAB_FINAL_DATASET", "VTAB_SELECT_DATASET", "DatasetEntry", "LocalLauncher", "MethodEntry", "RayLauncher",
    "RunSpec", "SweepConfig", "VtabConfig", "create_launcher", "execute_run", "final_specs", "final_view",
    "format_summary", "incompatibility", "load_sweep_config", "plan_sweep", "run_folder_name", "run_hash",
    "run_sweep", "select_best", "selection_view", "union",
]
