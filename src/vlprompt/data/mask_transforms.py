"""Transforms of an (image, mask) pair that keep the two aligned: resize, random crop, flip, then tensors.

Training follows mmsegmentation's ADE20K pipeline in its geometric part: a random rescale of the short side
(ratio 0.5-2.0 of the crop size, keeping the aspect ratio), a random crop of the backbone's input size (padded with
0 / the ignore index where the image is smaller), a horizontal flip with probability 0.5. We differ in two places,
said here: no photometric distortion, and no ``cat_max_ratio`` re-draw of crops dominated by one class.
Images are resized bilinearly (bicubic for the backbone's own recipe where it asks), masks always by nearest
neighbour, so no label is ever invented. Randomness comes from torch's global RNG, which the data loader seeds
per (seed, epoch, index) (data/loading.py), so a resumed run replays the same crops.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as F

from vlprompt.backbones.base import PreprocessConfig
from vlprompt.data.segmentation import IGNORE_INDEX, mask_array

# The random rescale of the short side, as a ratio of the input size (mmsegmentation's ratio_range).
RESCALE_RANGE = (0.5, 2.0)


def _rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB") if image.mode != "RGB" else image


def _resample(config: PreprocessConfig) -> Image.Resampling:
    return Image.BICUBIC if config.interpolation == "bicubic" else Image.BILINEAR


def _to_tensors(image: Image.Image, mask: np.ndarray, config: PreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    tensor = F.normalize(F.to_tensor(image), config.mean, config.std)
    return tensor, torch.from_numpy(np.ascontiguousarray(mask)).long()


class SegmentationTrainTransform:
    """Random rescale + crop + flip of the pair to ``image_size`` squares (picklable for workers)."""

    def __init__(self, config: PreprocessConfig, augment: str, ignore_index: int = IGNORE_INDEX) -> None:
        self.config = config
        self.augment = augment
        self.ignore_index = ignore_index

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.image_size
        image = _rgb(image)
        labels = mask_array(mask)
        if self.augment == "none":
            return SegmentationEvalTransform(self.config)(image, mask)
        ratio = float(torch.empty(1).uniform_(*RESCALE_RANGE))
        width, height = image.size
        scale = size * ratio / min(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        image = image.resize((new_w, new_h), _resample(self.config))
        labels = np.asarray(Image.fromarray(labels.astype(np.int32)).resize((new_w, new_h), Image.NEAREST),
                            dtype=np.int64)
        pad_h, pad_w = max(0, size - new_h), max(0, size - new_w)
        pixels = np.asarray(image)
        if pad_h or pad_w:
            pixels = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)))
            labels = np.pad(labels, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        top = int(torch.randint(pixels.shape[0] - size + 1, (1,)))
        left = int(torch.randint(pixels.shape[1] - size + 1, (1,)))
        pixels = pixels[top : top + size, left : left + size]
        labels = labels[top : top + size, left : left + size]
        if float(torch.rand(1)) < 0.5:
            pixels, labels = pixels[:, ::-1], labels[:, ::-1]
        return _to_tensors(Image.fromarray(np.ascontiguousarray(pixels)), labels, self.config)


class SegmentationEvalTransform:
    """The whole image resized to ``image_size`` squares with its mask (nearest): batches of one shape, for
    validation during training and SPT's prototype pass. Metrics at the original size are computed by
    train/dense_predict.py from the untransformed masks, not from this one."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.image_size
        image = _rgb(image).resize((size, size), _resample(self.config))
        labels = np.asarray(Image.fromarray(mask_array(mask).astype(np.int32)).resize((size, size), Image.NEAREST),
                            dtype=np.int64)
        return _to_tensors(image, labels, self.config)


class SegmentationTestTransform:
    """For evaluation at the original size: the normalised image at its own size and the untouched mask.
    Inference (whole image or sliding window) resizes the image itself and maps logits back."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return _to_tensors(_rgb(image), mask_array(mask), self.config)
