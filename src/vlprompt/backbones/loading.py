"""What every library loader shares: option parsing and the errors that say how to provide weights."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from vlprompt.core.errors import CheckpointError, VlpromptError


def as_bool(value: Any, field: str) -> bool:
    """A boolean backbone option, also from the strings a CLI override gives ("true", "0", ...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise VlpromptError(f"Backbone option {field}={value!r} is not a boolean; use true or false.")


def close_names(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def missing_weights(name: str, how_local: str, random_hint: str) -> VlpromptError:
    return VlpromptError(
        f"No weights for backbone '{name}' on this machine, and the model hub is unreachable or offline mode is on. "
        f"Provide them in one of three ways: {how_local}; or pre-populate the Hugging Face cache (HF_HOME) on a "
        f"machine with network, e.g. by loading the model once there, and copy it here; or, for a random-init "
        f"model (tests, speed checks), pass {random_hint}."
    )


def wrong_checkpoint(name: str, source: str, error: Exception) -> CheckpointError:
    detail = str(error).strip().splitlines()
    summary = " ".join(line.strip() for line in detail[:3])[:400]
    return CheckpointError(
        f"The weights in '{source}' do not fit backbone '{name}': {summary} ... Check that the file was saved from "
        "this architecture with the same size options (img_size, patch_size, embed_dim, depth, ...) and pass those "
        "options as keyword arguments when they differ from the architecture's defaults."
    )
