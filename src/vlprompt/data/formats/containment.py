"""The one rule for where a dataset's images may live: inside its image folder, as the file system resolves it.

A split file's path is refused when its ``..`` climbs out of the image folder (reading.normalise_relpath, on the
text alone); a symbolic link inside the folder that leads out of it is refused by the same rule here, on the
resolved path. Both exist so that a dataset someone hands over (a split file, an archive with links in it) reads
only its own files, and so that a dataset copied elsewhere still holds every image it names. The image folder
itself may be a link (``images -> /data/pets``): it is resolved once and everything inside it is judged against
its real location.
"""

from __future__ import annotations

import os
from pathlib import Path


class ImageFolderBounds:
    """Answers "does this relative image path stay inside the image folder once links are followed?".

    Directories are resolved once each (a dataset has few of them and many files); a file costs one lstat, and a
    full resolution only when it is a link itself."""

    def __init__(self, image_root: str | Path) -> None:
        self.root = str(image_root)
        self.real_root = os.path.realpath(self.root)
        self._real_dirs: dict[str, str] = {}

    def escape(self, relative: str) -> str | None:
        """The real location of ``relative`` when it lies outside the image folder, else None (a missing file
        is not an escape: the existence checks report it)."""
        full = os.path.join(self.root, relative)
        parent, name = os.path.split(full)
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:
            real_parent = self._real_dirs[parent] = os.path.realpath(parent)
        real = os.path.join(real_parent, name)
        if os.path.islink(real):
            real = os.path.realpath(real)
        return None if _inside(real, self.real_root) else real

    def message(self, relative: str, real: str) -> str:
        return (
            f"image '{relative}' resolves to '{real}', outside the image folder '{self.root}' (a symbolic link on "
            "the way leads out). Images must lie inside the image folder, as paths with '..' must: copy the files "
            "in, or make the image folder itself the link"
        )


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
