"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

A failed write (a full disk raises OSError from Python, RuntimeError from torch.save's C++ writer and
SafetensorError from safetensors' Rust one) becomes one
WriteError naming the file, its folder and the free space there; the previous complete file stays as it was.
Files follow the process umask (and a folder's default ACL) like any ``open()`` would: the temporary file is
created by ``os.open`` with mode 0666 and the kernel applies the umask, so the umask is never read by flipping
it (``os.umask(0)`` then back would leave a window in which another thread's files are created 0666).
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from vlprompt.core.errors import VlpromptError


class WriteError(VlpromptError, OSError):
    """A file could not be written (full disk, quota, permissions); earlier complete files are intact."""


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the disk holding ``folder`` (or its nearest existing parent); None when unknown."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _size(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


def write_failed(path: Path, error: BaseException) -> WriteError:
    free = free_bytes(path.parent)
    full = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        free is not None and free < 1024 * 1024)
    detail = error.strerror if isinstance(error, OSError) and error.strerror else " ".join(str(error).split())
    reason = f"the disk is full: {detail[:160]}" if full else detail[:200]
    space = "free space unknown" if free is None else f"{_size(free)} free"
    return WriteError(
        f"Could not write '{path.name}' in '{path.parent}' ({reason}; {space}). The previous complete files "
        "there are intact. Free some space (or choose another --out) and rerun: an unfinished run resumes from "
        "its last saved state."
    )


def _new_temp(path: Path) -> Path:
    """A new empty file beside ``path`` with the mode a plain ``open(path, "w")`` would give it (mkstemp would
    give 0600); O_EXCL with a random name, so two writers never share one."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as error:
            raise write_failed(path, error) from error
        os.close(fd)
        return tmp


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp(path)
    try:
        mode = os.stat(tmp_path).st_mode & 0o7777  # what the kernel gave a new file here (umask, default ACL)
        write(tmp_path)
        if os.stat(tmp_path).st_mode & 0o7777 != mode:  # a writer that recreated the file (safetensors: 0600)
            os.chmod(tmp_path, mode)
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except (OSError, RuntimeError, SafetensorError) as error:
        if isinstance(error, WriteError):
            raise
        raise write_failed(path, error) from error
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line, whole or not at all: a failed write is cut back to the previous end of file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, sort_keys=True, default=float) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        end = os.fstat(fd).st_size
        try:
            if os.write(fd, data) != len(data):
                raise OSError(28, "short write (disk full?)")
        except OSError as error:
            os.ftruncate(fd, end)
            raise write_failed(path, error) from error
    finally:
        os.close(fd)


def read_json(path: str | Path, remedy: str, error: type[VlpromptError] = VlpromptError) -> Any:
    """JSON from a file the library wrote and may find damaged or replaced (a run folder is copied and shared):
    bytes that are not UTF-8 JSON (a planted pickle included) become one ``error`` naming the file and saying
    ``remedy``; nothing but JSON is ever parsed."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise error(f"'{path}' is not valid JSON ({type(problem).__name__}: {str(problem)[:120]}); {remedy}") from None


def check_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Fail before any work when ``path`` cannot be created or written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-", delete=True):
            pass
    except OSError as error:
        raise VlpromptError(
            f"The {what} '{path}' is not writable ({error.strerror or error}). Choose another folder with --out "
            "or fix its permissions; this was checked before any work started, so nothing was done."
        ) from None
    return path
