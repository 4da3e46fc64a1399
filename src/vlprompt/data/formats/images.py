"""Images on disk: opening one as RGB with a clear error, listing image files and class folders."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from vlprompt.core.errors import DataError
from vlprompt.data.formats.containment import ImageFolderBounds
from vlprompt.data.formats.parsed import IMAGE_SUFFIXES, Sample
from vlprompt.data.formats.problems import ERROR, Problem


class ImageLoader:
    """Opens images under one root as RGB; a plain object (not a closure) so DataLoader workers can pickle it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.bounds = ImageFolderBounds(self.root)

    def path(self, source: str) -> Path:
        return self.root / source

    def __call__(self, source: str) -> Image.Image:
        path = self.root / source
        real = self.bounds.escape(source)  # also enforced here: check_files=false skips the up-front check
        if real is not None:
            raise DataError(f"{self.bounds.message(source, real)}.")
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise DataError(
                f"Image file '{path}' is missing. Restore it, or remove it from its split file; "
                "'vlprompt data check NAME ROOT' lists every missing or corrupt image at once."
            ) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(
                f"Image file '{path}' cannot be decoded ({error}). Replace the file or remove it from its split "
                "file; 'vlprompt data check NAME ROOT' lists every corrupt image at once."
            ) from None

    def __repr__(self) -> str:
        return f"ImageLoader({str(self.root)!r})"


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix), sorted; hidden files skipped. scandir's entry types
    avoid one stat per file, which matters for ImageNet's 1.28M images."""
    with os.scandir(folder) as entries:
        names = [
            entry.name
            for entry in entries
            if not entry.name.startswith(".")
            and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
            and entry.is_file()
        ]
    return [folder / name for name in sorted(names)]


def list_subfolders(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        names = [entry.name for entry in entries if not entry.name.startswith(".") and entry.is_dir()]
    return [folder / name for name in sorted(names)]


def scan_class_folders(
    split_dir: Path,
    prefix: str,
    label_of: dict[str, int],
    problems: list[Problem],
    unknown: str,
    severity: str = ERROR,
) -> list[Sample]:
    """Samples from ``split_dir/<class>/<image>`` for the classes in ``label_of``; a folder that names no known
    class is reported (``unknown`` formatted with ``{name}``) and its images are skipped."""
    samples: list[Sample] = []
    for class_dir in list_subfolders(split_dir):
        label = label_of.get(class_dir.name)
        if label is None:
            problems.append(Problem(str(class_dir), None, unknown.format(name=class_dir.name), "classname", severity))
            continue
        samples += [Sample(f"{prefix}{class_dir.name}/{p.name}", label) for p in list_images(class_dir)]
    return samples
