"""Name -> factory registries. Register where you define; create by name; duplicate names raise."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from vlprompt.core.errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """``populate`` imports the modules that register names; it runs once, before the first lookup, so that a
    lookup works in a fresh interpreter whichever entry point (CLI, library call, demo) came first."""

    def __init__(self, kind: str, populate: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._populate = populate

    def _ensure_populated(self) -> None:
        populate, self._populate = self._populate, None
        if populate is None:
            return
        try:
            populate()
        except BaseException:
            self._populate = populate
            raise

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        self._ensure_populated()
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._entries) from None

    def __contains__(self, name: str) -> bool:
        self._ensure_populated()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._ensure_populated()
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        self._ensure_populated()
        return sorted(self._entries)
