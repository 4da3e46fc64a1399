"""Segmentation predictions on files: a label PNG and a colour overlay beside each image (or under a folder).

For ``photo.jpg`` the outputs are ``photo.mask.png`` (a palette PNG whose pixel values are class indices and whose
palette is the task's colours, so any viewer shows it in colour and any reader gets the indices back) and
``photo.overlay.png`` (the image blended half-and-half with the class colours). Files are written atomically.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vlprompt.core.errors import DataError
from vlprompt.core.io import atomic_write

MASK_SUFFIX = ".mask.png"
OVERLAY_SUFFIX = ".overlay.png"
OVERLAY_ALPHA = 0.5


def mask_image(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """Class indices [H, W] as a palette ("P") PNG image coloured by ``palette``."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [int(c) for colour in palette for c in colour][: 256 * 3]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def overlay_image(image: Image.Image, mask: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    colours = np.asarray(palette, dtype=np.float64)[mask]
    blended = (1 - OVERLAY_ALPHA) * np.asarray(image.convert("RGB"), dtype=np.float64) + OVERLAY_ALPHA * colours
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def output_paths(image_path: Path, out_dir: Path | None, base: Path | None) -> tuple[Path, Path]:
    """Where an image's mask and overlay go: beside it, or under ``out_dir`` mirroring its path below ``base``."""
    stem = image_path.name.rsplit(".", 1)[0]
    folder = image_path.parent
    if out_dir is not None:
        relative = image_path.parent.relative_to(base) if base is not None else Path()
        folder = out_dir / relative
    return folder / f"{stem}{MASK_SUFFIX}", folder / f"{stem}{OVERLAY_SUFFIX}"


def write_mask_predictions(method, inputs: Sequence[Path], out_dir: str | Path | None = None,
                           base: Path | None = None, mode: str = "whole", stride: int | None = None,
                           device: str = "cpu") -> list[dict]:
    """Predict a mask per image and write its mask and overlay PNGs; returns one record per image (paths and the
    share of pixels of each predicted class)."""
    from vlprompt.eval.segment_predict import predict_masks

    labels = method.labels
    out = Path(out_dir) if out_dir is not None else None
    records = []
    for path in inputs:
        path = Path(path)
        if path.name.endswith((MASK_SUFFIX, OVERLAY_SUFFIX)):
            continue  # our own outputs of an earlier run over the same folder
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError as error:
            raise DataError(f"Cannot read image '{path}': {error}. Remove it or pass only images.") from error
        mask = predict_masks(method, [image], mode=mode, stride=stride, device=device)[0].numpy()
        mask_path, overlay_path = output_paths(path, out, base)
        _save(mask_image(mask, labels.palette), mask_path)
        _save(overlay_image(image, mask, labels.palette), overlay_path)
        counts = np.bincount(mask.ravel(), minlength=labels.num_classes) / mask.size
        shares = {labels.classnames[i]: round(float(c), 4) for i, c in enumerate(counts) if c > 0}
        records.append({"path": str(path), "mask": str(mask_path), "overlay": str(overlay_path), "classes": shares})
    return records
