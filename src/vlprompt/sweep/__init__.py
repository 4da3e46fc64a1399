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

The names below load on first use, so ``import vlprompt.sweep`` (and a worker's ``python -m vlprompt.sweep``)
stays light until something is asked for.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "vlprompt.data.vtab_stages": ("VTAB_FINAL_DATASET", "VTAB_SELECT_DATASET", "final_view", "selection_view",
                                  "union"),
    "vlprompt.artifacts.files": ("ERROR_NAME", "LOG_NAME", "SPEC_NAME"),
    "vlprompt.sweep.config": ("DatasetEntry", "MethodEntry", "SweepConfig", "VtabConfig", "list_sweeps",
                              "load_sweep_config"),
    "vlprompt.sweep.launchers": ("LAUNCHERS", "LocalLauncher", "RayLauncher", "create_launcher"),
    "vlprompt.sweep.plan": ("RUNS_DIR", "SELECTION_NAME", "SUMMARY_NAME", "RunSpec", "final_specs",
                            "incompatibility", "plan_sweep", "run_folder_name", "run_hash", "select_best"),
    "vlprompt.sweep.runner": ("execute_run", "format_summary", "run_sweep"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'vlprompt.sweep' has no attribute '{name}'")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
