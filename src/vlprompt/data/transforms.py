"""Image transforms built from a backbone's own preprocess config."""
from __future__ import annotations

from torchvision import transforms as T

from vlprompt.backbones.base import PreprocessConfig

_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def _interpolation(config: PreprocessConfig) -> T.InterpolationMode:
    return _INTERPOLATION.get(config.interpolation, T.InterpolationMode.BICUBIC)


def eval_transform(config: PreprocessConfig) -> T.Compose:
    """Resize the short side to image_size / crop_pct, centre-crop, normalise (the backbone's own recipe)."""
    resize = round(config.image_size / max(config.crop_pct, 1e-6))
    return T.Compose(
        [
            T.Lambda(_to_rgb),
            T.Resize(resize, interpolation=_interpolation(config)),
            T.CenterCrop(config.image_size),
            T.ToTensor(),
            T.Normalize(config.mean, config.std),
        ]
    )


def train_transform(config: PreprocessConfig, augment: str) -> T.Compose:
    """Augmentation for training; 'none' equals the eval transform. Randomness comes from torch's global RNG,
    which the trainer seeds and saves in its resume state."""
    if augment == "none":
        return eval_transform(config)
    steps = [T.Lambda(_to_rgb)]
    if augment in ("crop_flip", "rrc_flip"):
        # rrc_flip is Dassl's random_resized_crop (scale 0.08-1, as CoOp and its successors train); crop_flip a
        # milder 0.5-1.
        scale = (0.08, 1.0) if augment == "rrc_flip" else (0.5, 1.0)
        steps.append(T.RandomResizedCrop(config.image_size, scale=scale, interpolation=_interpolation(config)))
    elif augment == "resize_crop_flip":
        # VPT's training transform: resize the short side to 256/224 of the input size, then a random crop.
        steps += [
            T.Resize(round(config.image_size * 256 / 224), interpolation=_interpolation(config)),
            T.RandomCrop(config.image_size),
        ]
    else:
        resize = round(config.image_size / max(config.crop_pct, 1e-6))
        steps += [T.Resize(resize, interpolation=_interpolation(config)), T.CenterCrop(config.image_size)]
    steps += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(config.mean, config.std)]
    return T.Compose(steps)


def _to_rgb(image):
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
