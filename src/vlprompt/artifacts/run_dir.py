"""The run-folder contract: every file name of a run folder, its atomic writes, its lock and its fingerprint.

A run folder never describes a run that did not happen. Its ``config.json`` holds the fingerprint of the
resolved run (every field that changes the result), fixed when the run starts: rerunning the same config
resumes it (or is a no-op once finished), another config is refused with the differing fields. A process that
trains a folder holds an OS lock on it (released by the kernel when the process dies), and a run is finished
only when ``results.json`` is written.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import platform
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlprompt.artifacts.files import (
    CONFIG_NAME,
    ERROR_NAME,
    LEGACY_RESUME_NAME,
    LOCK_NAME,
    LOG_NAME,
    METRICS_NAME,
    PROMPTS_META_NAME,
    PROMPTS_NAME,
    RESULTS_NAME,
    RESUME_NAME,
    SPEC_NAME,
)
from vlprompt.core.errors import VlpromptError
from vlprompt.core.io import append_jsonl, atomic_write_json, atomic_write_text, read_json

INDEX_DIR = "indices"

# Files of an unfinished attempt: removed by --restart, never by a resume.
ATTEMPT_FILES = (CONFIG_NAME, METRICS_NAME, RESUME_NAME, LEGACY_RESUME_NAME, PROMPTS_NAME, PROMPTS_META_NAME, ERROR_NAME,
                 RESULTS_NAME)

# Fields that do not change what a run computes: where files go, how often it logs or saves, how it is shown.
NON_RESULT_FIELDS = frozenset({
    "out", "index_dir", "train.device", "train.progress", "train.cache_dir", "train.resume",
    "train.checkpoint_every", "train.log_every", "train.eval_batch_size", "train.num_workers", "train.tensorboard",
    "train.deterministic",
})


class RunLockedError(VlpromptError):
    """Another live process holds the run folder's lock."""


class RunConfigMismatch(VlpromptError):
    """The run folder holds (or resumes) a run of another config."""


def mismatch_error(folder: Path, old: dict, new: dict, finished: bool, what: str = "") -> RunConfigMismatch:
    """The refusal to continue or overwrite a run of another config: the differing fields and the ways out."""
    diff = differing_fields(old, new)
    shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
    state = "a finished run" if finished else "an unfinished run"
    way_out = (
        "pass --overwrite to replace it (the old run stays intact until the new one has finished)"
        if finished
        else "pass --restart to discard its progress and start afresh under the new config"
    )
    return RunConfigMismatch(
        f"The run folder '{folder}' holds {state}{what} of another config ({len(diff)} field(s) differ, stored -> "
        f"now: {shown}). Its files describe that run, so it is neither continued nor overwritten silently. Rerun "
        f"with the same config to {'leave it as it is' if finished else 'resume it'}, write to a new --out, or "
        f"{way_out}."
    )


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def fingerprint_fields(run: dict, train: dict) -> dict[str, Any]:
    """The result-defining fields of a run, flat and JSON-canonical: the run config with its resolved training
    config in place of the overrides, minus ``NON_RESULT_FIELDS``."""
    merged = {**{k: v for k, v in run.items() if k != "train"}, "train": train}
    flat = _flatten(json.loads(json.dumps(merged, default=str)))
    return {k: v for k, v in sorted(flat.items()) if k not in NON_RESULT_FIELDS}


def fingerprint_hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def differing_fields(old: dict, new: dict) -> list[str]:
    """'train.lr: 0.002 -> 0.5' for every field whose value differs (or exists on one side only)."""
    missing = "(unset)"
    return [
        f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    ]


def config_document(run: dict, train_resolved: dict, backbone_id: str, root_as_given: str | None = None) -> dict:
    """config.json's content (without its fingerprint): the run, its resolved training config, and what
    produced it."""
    import torch

    from vlprompt import __version__

    document = {
        "run": run,
        "train_resolved": train_resolved,
        "backbone_id": backbone_id,
        "vlprompt_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if root_as_given is not None and root_as_given != run.get("root"):
        document["root_as_given"] = root_as_given
    return document


# Run folders whose lock this process holds: a nested lock of the same folder (the experiment, then its
# trainer) is a no-op instead of a self-deadlock.
_HELD: dict[str, int] = {}


class RunDir:
    """One run folder. Paths are attributes (``run.config``, ``run.results``...), writes are atomic."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    config = property(lambda self: self.path / CONFIG_NAME)
    metrics = property(lambda self: self.path / METRICS_NAME)
    results = property(lambda self: self.path / RESULTS_NAME)
    resume = property(lambda self: self.path / RESUME_NAME)
    legacy_resume = property(lambda self: self.path / LEGACY_RESUME_NAME)
    prompts = property(lambda self: self.path / PROMPTS_NAME)
    prompts_meta = property(lambda self: self.path / PROMPTS_META_NAME)
    error = property(lambda self: self.path / ERROR_NAME)
    spec = property(lambda self: self.path / SPEC_NAME)
    log = property(lambda self: self.path / LOG_NAME)
    indices = property(lambda self: self.path / INDEX_DIR)

    # ----- state -----
    def is_finished(self) -> bool:
        """Finished means results written: prompts without results are an unfinished run."""
        return self.results.is_file()

    def read_json(self, path: Path) -> Any:
        return read_json(path, "the run folder is damaged: rerun with --restart (or --overwrite when it was "
                               "finished), or write to a new --out.")

    def read_config(self) -> dict | None:
        return self.read_json(self.config) if self.config.is_file() else None

    def read_results(self) -> list[dict]:
        return self.read_json(self.results)

    def stored_fingerprint(self) -> dict | None:
        """The fingerprint fields of the run this folder holds (also from folders written before fingerprints
        were stored, from their resolved config), or None when it holds none."""
        saved = self.read_config()
        if not saved or "run" not in saved:
            return None
        if "fingerprint" in saved:
            return saved["fingerprint"]["fields"]
        return fingerprint_fields(saved["run"], saved.get("train_resolved", saved["run"].get("train", {})))

    # ----- writes -----
    def write_config(self, document: dict, fields: dict) -> Path:
        return atomic_write_json(self.config, {**document, "fingerprint": {"hash": fingerprint_hash(fields),
                                                                           "fields": fields}})

    def write_results(self, records: list[dict]) -> Path:
        """Mark the run finished: results first, then the resume state (kept until now) goes."""
        path = atomic_write_json(self.results, records)
        self.resume.unlink(missing_ok=True)
        return path

    def append_metric(self, record: dict) -> None:
        append_jsonl(self.metrics, record)

    def rewrite_metrics(self, history: list[dict]) -> None:
        """One history per folder: on resume the file becomes exactly the restored history; on a fresh start
        it goes (a killed attempt's lines would otherwise stay in front of the new ones)."""
        if not history:
            self.metrics.unlink(missing_ok=True)
            return
        text = "".join(json.dumps(r, sort_keys=True, default=float) + "\n" for r in history)
        atomic_write_text(self.metrics, text)

    def write_error(self, text: str) -> bool:
        """Record a failure; False (and nothing raised) when even that cannot be written, e.g. a full disk:
        the caller's own error report must not be lost to a second one."""
        try:
            atomic_write_text(self.error, text)
        except (OSError, VlpromptError):
            return False
        return True

    def start_api_run(self, method, train_config, task) -> dict:
        """For ``Trainer(..., out_dir=...)`` from Python: the config.json the CLI writes, built from what the
        API knows (the task's source, recorded by load_dataset, names its data); returns the fingerprint.
        A folder holding another run is refused as on the command line."""
        source = task.meta.get("source", {})
        run = {
            "method": method.method_name,
            "backbone": method.backbone.backbone_id,
            "dataset": source.get("dataset", task.name),
            "root": source.get("root"),
            "dataset_options": source.get("options", {}),
            "method_options": dataclasses.asdict(method.config),
            "protocol": "fewshot",
            "shots": task.meta.get("shots", 0),
            "seed": train_config.seed,
            "targets": [],
            "train": {},
        }
        train = dataclasses.asdict(train_config)
        fields = {**fingerprint_fields(run, train), "classnames": list(method.labels.classnames)}
        stored = self.stored_fingerprint()
        if stored is not None and stored != fields:
            raise mismatch_error(self.path, stored, fields, finished=False)
        if stored is None:
            self.write_config(config_document(run, train, method.backbone.backbone_id), fields)
        return fields

    def clear_attempt(self) -> None:
        """Forget an attempt (``--restart``): its config, history, resume state, prompts, results and error."""
        for name in ATTEMPT_FILES:
            self.file(name).unlink(missing_ok=True)

    # ----- lock -----
    @contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the folder's OS lock while training it. Without ``wait`` a locked folder raises RunLockedError
        naming the holder's pid and whether that process is alive.

        A POSIX record lock (fcntl.lockf), not flock: a record lock belongs to the process, so DataLoader
        workers forked while it is held do not hold it, and the kernel releases it the moment the process dies,
        even while its workers linger for a few seconds (a flock is shared by every forked copy of the
        descriptor: a rerun right after kill -9 was refused). Its caveat: closing ANY descriptor of the lock
        file in this process releases the lock; this process opens it once (``_HELD``) and nothing else here
        opens ``.lock``."""
        key = str(self.path.resolve())
        if key in _HELD:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise RunLockedError(self._locked_message(fd)) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD[key] = fd
            try:
                yield
            finally:
                del _HELD[key]
        finally:
            os.close(fd)  # releases the lock

    def _locked_message(self, fd: int) -> str:
        """Who holds the lock: the kernel's answer (F_GETLK, Linux) before the pid the holder wrote in the file."""
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        written = int(text) if text.isdigit() else None
        holder = lock_holder(fd)
        pid = holder or written
        if pid is None:
            who = "another process (pid unknown)"
        elif pid_alive(pid):
            who = f"another process (pid {pid}, alive)"
        else:
            who = (f"another process (pid {pid}, which is no longer running: the lock was released just now, "
                   "rerun)")
        return (f"The run folder '{self.path}' is being trained by {who}. Wait for it to finish (the rerun then "
                "finds it finished), or choose another --out.")


def lock_holder(fd: int) -> int | None:
    """The pid holding a record lock on ``fd``'s file, as the kernel reports it (Linux ``struct flock``:
    short type, short whence, off_t start, off_t len, pid_t pid); None elsewhere or when nobody holds it."""
    if not sys.platform.startswith("linux"):
        return None
    query = struct.pack("@hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return None
    kind, _, _, _, pid = struct.unpack("@hhqqi", answer)
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
