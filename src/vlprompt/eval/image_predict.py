"""Prediction on images a user has (paths or PIL images): the backbone's own eval transform, batches on the
chosen device, the top-k class names with softmax probabilities per image. Reading inputs from folders or CSVs
and writing the records out is the serving side's (serve/inference.py)."""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from vlprompt.core.errors import DataError, VlpromptError
from vlprompt.data.transforms import eval_transform

log = logging.getLogger(__name__)

def load_image(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    try:
        with Image.open(item) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise DataError(f"Image '{item}' does not exist.") from None
    except Image.DecompressionBombError as error:
        # PIL refuses images over twice Image.MAX_IMAGE_PIXELS before decoding them: a small file that would
        # expand to gigabytes is a classic way to exhaust a server's memory.
        raise DataError(
            f"Image '{item}' was refused as a possible decompression bomb ({error}). If it is a genuine image, "
            "downscale it first, or raise PIL.Image.MAX_IMAGE_PIXELS when calling vlprompt from Python."
        ) from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"Image '{item}' cannot be read ({error}); the file is not an image or is damaged.") from None


def image_batches(items: Sequence, preprocess, batch_size: int, progress: bool) -> Iterator[torch.Tensor]:
    """Preprocessed batches [b, 3, H, W] of ``items`` (PIL images or paths), with a progress bar on a terminal."""
    transform = eval_transform(preprocess)
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", disable=None if progress else True, leave=False):
        yield torch.stack([transform(load_image(item)) for item in items[start : start + batch_size]])


def topk_records(logits: torch.Tensor, classnames: Sequence[str], topk: int) -> list[dict]:
    probs = logits.float().softmax(dim=-1)
    k = min(topk, probs.shape[-1])
    values, indices = probs.topk(k, dim=-1)
    return [
        {"labels": [classnames[i] for i in idx.tolist()], "probs": [round(float(v), 6) for v in vals]}
        for vals, idx in zip(values, indices)
    ]


@torch.no_grad()
def predict_images(method, images: Sequence, topk: int = 5, batch_size: int = 64, device: str | None = None,
                   progress: bool = False) -> list[dict]:
    """Top-k class names and probabilities for each image (PIL image or path), in input order.

    Each record is {"input": the path (or the index of a PIL image), "labels": [...], "probs": [...]}.
    """
    if topk < 1:
        raise VlpromptError(f"topk = {topk}: ask for at least 1 label.")
    if device is not None:
        from vlprompt.core.distributed import resolve_device

        method.to(resolve_device(device))
    method.eval()
    target = next((p.device for p in method.parameters()), torch.device("cpu"))
    items = list(images)
    records = []
    for batch in image_batches(items, method.backbone.preprocess, batch_size, progress):
        logits = method.predict({"image": batch.to(target)})
        records += topk_records(logits.cpu(), method.labels.classnames, topk)
    for index, (item, record) in enumerate(zip(items, records)):
        record["input"] = index if isinstance(item, Image.Image) else str(item)
    return records
