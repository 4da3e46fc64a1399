"""Segmentation inference at the original image size, and the split's metrics from one confusion matrix.

Two inference modes, as mmsegmentation's ``test_cfg``:
- ``whole``: the image resized to the backbone's square input, logits resized back to the image (bilinear).
- ``slide``: the image rescaled so its short side is the input size (aspect kept), square windows of that size
  every ``stride`` pixels (default 2/3 of it, SETR's 341 of 512), overlapping logits averaged, then resized back.
Either way predictions are compared with the untouched mask, so the numbers are at the original size.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from vlprompt.core import distributed
from vlprompt.core.errors import ConfigError
from vlprompt.data.mask_transforms import SegmentationTestTransform
from vlprompt.eval.segment_metrics import confusion_matrix, reduce_confusion, segmentation_scores

INFERENCE_MODES = ("whole", "slide")


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def _windows(length: int, crop: int, stride: int) -> list[int]:
    """Window starts covering [0, length): mmseg's grid, the last window flush with the end."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + crop, length) - crop, 0) for i in range(count)})


@torch.no_grad()
def segment_logits(method, images: torch.Tensor, mode: str = "whole", stride: int | None = None,
                   batch_size: int = 32) -> torch.Tensor:
    """Logits [B, C, H, W] at the images' own size for normalised images [B, 3, H, W] of one size."""
    if mode not in INFERENCE_MODES:
        raise ConfigError(f"segmentation inference mode = {mode!r}; choose one of {list(INFERENCE_MODES)}.")
    size = method.backbone.preprocess.image_size
    height, width = images.shape[-2:]
    if mode == "whole":
        logits = torch.cat([method.predict({"image": _resize(chunk, (size, size))}).float()
                            for chunk in images.split(batch_size)])
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    stride = stride or max(1, size * 2 // 3)
    scale = size / min(height, width)
    scaled = _resize(images, (max(size, round(height * scale)), max(size, round(width * scale))))
    rows, cols = _windows(scaled.shape[-2], size, stride), _windows(scaled.shape[-1], size, stride)
    boxes = [(top, left) for top in rows for left in cols]
    total = None
    for image in scaled:
        crops = torch.stack([image[:, t : t + size, l : l + size] for t, l in boxes])
        logits = torch.cat([method.predict({"image": chunk}).float() for chunk in crops.split(batch_size)])
        summed = logits.new_zeros(logits.shape[1], *scaled.shape[-2:])
        hits = logits.new_zeros(1, *scaled.shape[-2:])
        for (top, left), window in zip(boxes, logits):
            summed[:, top : top + size, left : left + size] += window
            hits[:, top : top + size, left : left + size] += 1
        averaged = (summed / hits).unsqueeze(0)
        total = averaged if total is None else torch.cat([total, averaged])
    return F.interpolate(total, size=(height, width), mode="bilinear", align_corners=False)


def _as_list(batch: list) -> list:
    return batch


def _same_size_groups(items: list, limit: int) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Consecutive (image, mask) items of one size stacked, at most ``limit`` per group."""
    group: list = []
    for item in items:
        if group and (item[0].shape != group[0][0].shape or len(group) == limit):
            yield torch.stack([g[0] for g in group]), [g[1] for g in group]
            group = []
        group.append(item)
    if group:
        yield torch.stack([g[0] for g in group]), [g[1] for g in group]


@torch.no_grad()
def evaluate_segmentation(method, dataset, *, batch_size: int = 32, device: str | torch.device = "cpu",
                          cache_dir: str | None = None, num_workers: int = 0, mode: str = "whole",
                          stride: int | None = None) -> dict:
    """mIoU / mAcc / aAcc / per-class IoU of ``method`` on a SegmentationDataset at the original image size.

    Each rank predicts every world_size-th image; the confusion matrices are summed over ranks, so the numbers
    equal one process's. ``cache_dir`` is accepted for the classification evaluator's signature and unused
    (dense predictions are not cached).
    """
    del cache_dir
    device = distributed.resolve_device(str(device)) if isinstance(device, str) else device
    method = method.to(device)
    was_training = method.training
    method.eval()
    labels = method.labels
    data = dataset.with_transform(SegmentationTestTransform(method.backbone.preprocess))
    mine = Subset(data, list(range(distributed.rank(), len(data), distributed.world_size())))
    workers = num_workers if len(mine) > batch_size else 0  # forking workers for one batch costs more than it saves
    loader = DataLoader(mine, batch_size=batch_size, collate_fn=_as_list, num_workers=workers)
    confusion = torch.zeros(labels.num_classes, labels.num_classes, dtype=torch.int64)
    for items in loader:
        for images, masks in _same_size_groups(items, batch_size):
            logits = segment_logits(method, images.to(device), mode, stride, batch_size)
            for pred, mask in zip(logits.argmax(dim=1).cpu(), masks):
                confusion += confusion_matrix(pred, mask, labels.num_classes, labels.ignore_index)
    method.train(was_training)
    scores = segmentation_scores(reduce_confusion(confusion), labels.classnames)
    scores["inference"] = mode
    return scores


@torch.no_grad()
def predict_masks(method, images: Sequence, mode: str = "whole", stride: int | None = None,
                  device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Class-index masks [H, W] (int64) for PIL images, each at its own size."""
    from PIL import Image

    device = distributed.resolve_device(str(device)) if isinstance(device, str) else device
    method = method.to(device)
    was_training = method.training
    method.eval()
    transform = SegmentationTestTransform(method.backbone.preprocess)
    masks = []
    for image in images:
        tensor, _ = transform(image, Image.new("L", image.size))
        logits = segment_logits(method, tensor.unsqueeze(0).to(device), mode, stride)
        masks.append(logits.argmax(dim=1)[0].cpu())
    method.train(was_training)
    return masks
