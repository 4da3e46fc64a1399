"""Launchers: where the runs of a sweep execute. Each takes run folders (their spec written) and returns
``{folder name: status}``; every run goes through ``runner.execute_run`` wherever it executes, so results are
the same whichever launcher ran them.

- ``local``: in this process (one worker) or a pool of ``python -m vlprompt.sweep FOLDER`` subprocesses. Workers
  sit in their own process group and get a parent-death signal (Linux prctl), so killing the sweep, even with
  SIGKILL, takes its workers with it. With CUDA, worker slot i sees only GPU i mod the visible GPU count.
- ``ray``: one Ray task per run with its CPU/GPU resources, on an existing cluster (``address``) or a local one
  (the optional extra ``vlprompt[ray]``; vlprompt and the sweep's imports must be importable on every node).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from vlprompt.artifacts.files import LOG_NAME
from vlprompt.artifacts.run_dir import RunDir
from vlprompt.core.errors import ConfigError, missing_extra
from vlprompt.sweep.parent_death import PARENT_ENV
from vlprompt.sweep.runner import FAILED, LOCKED, RAN, execute_run

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "ray")
EXIT_LOCKED = 75  # a worker's exit status for "the folder is locked by another process" (EX_TEMPFAIL)


class Launcher(Protocol):
    name: str

    def run(self, folders: list[Path]) -> dict[str, str]:
        """Execute every folder's run; {folder name: RAN | FAILED | LOCKED}."""
        ...


def visible_gpus(env: dict | None = None) -> list[str]:
    """The GPU ids workers may use: CUDA_VISIBLE_DEVICES when set, else every device torch sees."""
    env = os.environ if env is None else env
    if env.get("CUDA_VISIBLE_DEVICES", "").strip():
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch

    if not torch.cuda.is_available():
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_env(workers: int, slot: int, gpus: list[str], base: dict | None = None) -> dict:
    """A worker's environment: its share of CPU threads and, when there are GPUs, one GPU by its slot."""
    env = dict(os.environ if base is None else base)
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


class LocalLauncher:
    """Runs in this process (``workers=1``) or as up to ``workers`` subprocesses at once."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers

    def run(self, folders: list[Path]) -> dict[str, str]:
        if self.workers <= 1:
            outcome = {}
            for folder in folders:
                log.info("sweep: running %s", folder.name)
                outcome[folder.name] = execute_run(folder)
            return outcome
        return self._pool(folders)

    def _pool(self, folders: list[Path]) -> dict[str, str]:
        outcome: dict[str, str] = {}
        pending = list(folders)
        running: dict[subprocess.Popen, tuple[Path, int]] = {}
        gpus = visible_gpus()
        try:
            while pending or running:
                free = sorted(set(range(self.workers)) - {slot for _, slot in running.values()})
                while pending and free:
                    folder, slot = pending.pop(0), free.pop(0)
                    log.info("sweep: starting %s", folder.name)
                    # The child writes to its own copy of the log's file descriptor.
                    with open(RunDir(folder).log, "w", encoding="utf-8") as handle:
                        process = subprocess.Popen(
                            [sys.executable, "-m", "vlprompt.sweep", str(folder)],
                            stdout=handle, stderr=subprocess.STDOUT,
                            env={**worker_env(self.workers, slot, gpus), PARENT_ENV: str(os.getpid())},
                            start_new_session=True,
                        )
                    running[process] = (folder, slot)
                time.sleep(0.1)
                for process in [p for p in running if p.poll() is not None]:
                    folder, _ = running.pop(process)
                    outcome[folder.name] = _status(process.returncode, RunDir(folder))
        finally:
            for process in running:
                _stop(process)
        return outcome


def _status(returncode: int, run_dir: RunDir) -> str:
    if returncode == EXIT_LOCKED:
        return LOCKED
    if returncode == 0 and run_dir.is_finished():
        return RAN
    if not run_dir.error.exists():
        run_dir.write_error(f"worker exited with status {returncode}; see {LOG_NAME}\n")
    return FAILED


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the worker's whole process group (its data-loading children too), then wait for it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    process.wait()


def _ray_task(folder: str) -> str:
    return execute_run(folder)


class RayLauncher:
    """One Ray task per run, ``cpus``/``gpus`` resources each. Connects to ``address`` ('auto' or HOST:PORT)
    unless Ray is already initialised in this process; without an address Ray starts a local cluster."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus: float = 1, gpus: float = 0) -> None:
        self.address, self.cpus, self.gpus = address, cpus, gpus

    def run(self, folders: list[Path]) -> dict[str, str]:
        if not folders:
            return {}
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)(_ray_task)
        pending = {task.remote(str(folder)): folder for folder in folders}
        outcome: dict[str, str] = {}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                folder = pending.pop(done[0])
                try:
                    outcome[folder.name] = ray.get(done[0])
                except ray.exceptions.RayError as error:  # the worker died (killed, out of memory, lost node)
                    RunDir(folder).write_error(f"Ray task failed: {' '.join(str(error).split())[:500]}\n")
                    outcome[folder.name] = FAILED
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
        return outcome


def _import_ray():
    try:
        import ray
    except ImportError:
        raise missing_extra("ray", "ray", "The sweep's 'ray' launcher needs Ray (or use --launcher local)") from None
    return ray


def create_launcher(name: str, workers: int = 1, address: str | None = None, cpus: float = 1,
                    gpus: float = 0) -> Launcher:
    if name == "local":
        return LocalLauncher(workers)
    if name == "ray":
        return RayLauncher(address, cpus, gpus)
    raise ConfigError(f"launcher = {name!r} is not allowed; choose one of {list(LAUNCHERS)}.")
