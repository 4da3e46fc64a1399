"""Skips for tests that need an optional extra (pytest puts tests/ on sys.path)."""
from __future__ import annotations

import pytest


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


HAS_TRANSFORMERS = _importable("transformers")
needs_transformers = pytest.mark.skipif(
    not HAS_TRANSFORMERS, reason="transformers is not installed (the optional extra: pip install 'vlprompt[hf]')"
)


def hf_param(name: str):
    """A parametrize value that needs transformers (the hf_clip layout)."""
    return pytest.param(name, marks=needs_transformers)
