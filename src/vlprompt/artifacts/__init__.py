"""Portable prompt artifacts: self-describing folders, loading them back, the model card.

``files`` holds the file names; ``card`` the generated README.md; ``pretrained`` save/from_pretrained.
Imported lazily so that low-level modules (train/checkpoint.py) can use ``files`` without a cycle.
"""
from __future__ import annotations

__all__ = ["from_pretrained", "save_pretrained"]


def __getattr__(name: str):
    if name in __all__:
        from vlprompt.artifacts import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'vlprompt.artifacts' has no attribute {name!r}")
