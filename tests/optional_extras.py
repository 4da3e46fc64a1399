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


def tiny_text_layouts() -> dict:
    """Every text-tower layout as a tiny random-init CLIP: open_clip CLIP, CustomTextCLIP, CustomTextCLIP pooled
    at an appended class token (the EOT is not the pooled position, so no fast path applies), and HF CLIP when
    transformers is installed."""
    from vlprompt.backbones.tiny import tiny_hf_clip, tiny_open_clip, tiny_open_clip_custom_text

    return {
        "open_clip": tiny_open_clip(seed=0),
        "open_clip_custom_text": tiny_open_clip_custom_text(seed=0),
        "open_clip_cls_token": tiny_open_clip_custom_text(seed=0, embed_cls=True, pool_type="last"),
        **({"hf_clip": tiny_hf_clip(seed=0)} if HAS_TRANSFORMERS else {}),
    }
