"""User-facing errors: the CLI prints these as one paragraph, without a traceback."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class VlpromptError(Exception):
    """An error caused by the user's input (a name, a config value, a file); the message says what to do."""


class ConfigError(VlpromptError, ValueError):
    """An invalid configuration value; the message names the field and the allowed values."""


class DataError(VlpromptError):
    """A dataset on disk is missing, corrupt or inconsistent; the message names the file and line."""


class CheckpointError(VlpromptError):
    """A checkpoint that does not fit the backbone, method or class set it is loaded into."""


class Preempted(VlpromptError):
    """Training stopped on SIGTERM (SLURM, Kubernetes) after saving its resume state; a rerun resumes."""


class MissingExtraError(VlpromptError):
    """An optional feature's package is not installed; the message names the pip extra that brings it."""


def missing_extra(package: str, extra: str, feature: str) -> MissingExtraError:
    """The error for a feature whose optional package (``pip install 'vlprompt[extra]'``) is missing."""
    return MissingExtraError(
        f"{feature}: {package} is not installed. Install it with: pip install 'vlprompt[{extra}]' (or "
        "'vlprompt[all]' for every optional feature)."
    )


def unknown_name(kind: str, name: str, known: Iterable[str]) -> VlpromptError:
    """An error for an unknown registry name that lists the close names (or all of them)."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"Did you mean: {', '.join(close)}?" if close else f"Known {kind}s: {', '.join(known) or '(none)'}."
    return VlpromptError(f"Unknown {kind} '{name}'. {hint} Run 'vlprompt list {kind}s' to see every name.")
