"""The split-role rules every format follows, in one place.

A dataset serves three roles: ``train`` and ``test`` are required (a test-only domain-shift target needs only
``test``), ``val`` is optional. Formats whose split names are the role names (CoOp's lists, FGVC's and CSV's
files, class folders) take their roles from the splits they found; VTAB and ImageNet map their own split names
onto roles and say so. How serious an absent split is follows from its role: a missing or empty ``val`` is a
warning (training runs without model selection), a missing or empty ``train`` or ``test`` an error.
"""

from __future__ import annotations

from collections.abc import Container

from vlprompt.data.formats.problems import ERROR, WARNING

ROLES = ("train", "val", "test")
OPTIONAL_ROLE = "val"


def required_roles(test_only: bool = False) -> tuple[str, ...]:
    """The roles a dataset cannot load without: test alone for a test-only target, else train and test."""
    return ("test",) if test_only else ("train", "test")


def absence_severity(role: str) -> str:
    """How serious a missing or empty split of ``role`` is: only the optional val role is a warning."""
    return WARNING if role == OPTIONAL_ROLE else ERROR


def roles_of(splits: Container[str], test_only: bool = False) -> dict[str, str]:
    """``{role: role}`` for formats whose split names are the roles: every role found, and the required roles
    even when absent, so that loading names the one that is missing."""
    required = required_roles(test_only)
    return {role: role for role in ROLES if role in splits or role in required}
