"""What is wrong with a dataset on disk, located by file and line: the one form every format, check and refusal
uses, so that loading (which refuses errors) and ``vlprompt data check`` (which lists them all) say the same."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset on disk, located by file and (for split files) 1-based line."""

    file: str
    line: int | None
    message: str
    kind: str = "format"
    severity: str = ERROR

    def location(self, root: str | Path | None = None) -> str:
        shown = display_path(self.file, root)
        return f"{shown}:{self.line}" if self.line is not None else shown

    def format(self, root: str | Path | None = None) -> str:
        return f"{self.location(root)}: {self.severity}: {self.message}"

    def __str__(self) -> str:
        return self.format()


def display_path(path: str | Path, root: str | Path | None = None) -> str:
    """``path`` relative to ``root`` when it lies under it (shorter messages), else as given."""
    if root is None:
        return str(path)
    try:
        relative = Path(path).relative_to(Path(root))
    except ValueError:
        return str(path)
    return str(path) if relative == Path(".") else str(relative)
