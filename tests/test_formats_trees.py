"""Builders of small dataset trees on disk with real image files, shared by the format and check tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def write_image(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if path.suffix == ".png" and color[0] == color[1] == color[2] else "RGB"
    image = Image.new(mode, (size, size), color[0] if mode == "L" else color)
    image.save(path)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    write_image(path, size=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def coop_pets(root: Path, entries: dict | None = None) -> Path:
    """oxford_pets/ with images/ and a split file written like CoOp's (indent=4, one value per line)."""
    folder = root / "oxford_pets"
    names = ["abyssinian", "beagle"]
    if entries is None:
        entries = {
            split: [[f"{names[c]}_{split}_{i}.jpg", c, names[c]] for c in range(2) for i in range(n)]
            for split, n in (("train", 3), ("val", 1), ("test", 2))
        }
    for split_entries in entries.values():
        for path, *_ in split_entries:
            if isinstance(path, str) and ".." not in path and not path.startswith("/"):
                write_image(folder / "images" / path)
    (folder / "split_zhou_OxfordPets.json").write_text(json.dumps(entries, indent=4))
    return folder


def vtab_task(root: Path, task: str = "eurosat", labels=(0, 1)) -> Path:
    folder = root / task
    files = {"train800": 2, "val200": 1, "test": 2}
    listing = {}
    for name, per_class in files.items():
        lines = []
        for label in labels:
            for i in range(per_class):
                rel = f"images/{name}_{label}_{i}.jpg"
                write_image(folder / rel)
                lines.append(f"{rel} {label}")
        listing[name] = lines
    listing["train800val200"] = listing["train800"] + listing["val200"]
    for name, lines in listing.items():
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return folder
