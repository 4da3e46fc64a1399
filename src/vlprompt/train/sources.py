"""Where the loop's training batches come from: cached frozen features or images decoded by workers.

Both sources draw nothing from global RNGs: a feature view is chosen by (seed, epoch), an image's
augmentation by (seed, epoch, index), so resuming mid-epoch replays the same batches.
"""
from __future__ import annotations

import torch

from vlprompt.core.seeding import derived_seed
from vlprompt.data.base import ImageDataset
from vlprompt.data.loading import BatchLoader


class FeatureSource:
    """Training batches from cached frozen image features ([N,D], or [V,N,D] for V augmented views)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
        self.features = features
        self.labels = labels
        self.seed = seed

    def __len__(self) -> int:
        return self.labels.numel()

    def batches(self, epoch: int, index_batches: list[torch.Tensor]):
        return (self.batch(indices, epoch) for indices in index_batches)

    def close(self) -> None:
        pass

    def batch(self, indices: torch.Tensor, epoch: int) -> dict:
        if self.features.dim() == 3:
            views = self.features.shape[0]
            generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch, 7))
            choice = torch.randint(views, (len(self),), generator=generator)[indices]
            feats = self.features[choice, indices]
        else:
            feats = self.features[indices]
        return {"features": feats, "label": self.labels[indices]}


class ImageSource:
    """Training batches decoded and augmented on the fly by DataLoader workers (methods that put prompts
    inside the image tower); an item's augmentation depends on (seed, epoch, index) only."""

    def __init__(self, dataset: ImageDataset, seed: int, num_workers: int, pin_memory: bool) -> None:
        self.size = len(dataset)
        self.loader = BatchLoader(dataset, seed=seed, num_workers=num_workers, pin_memory=pin_memory)

    def __len__(self) -> int:
        return self.size

    def batches(self, epoch: int, index_batches: list[torch.Tensor]):
        return ({"image": images, "label": labels} for images, labels in self.loader.run(epoch, index_batches))

    def close(self) -> None:
        """Stop the persistent workers now rather than whenever the loader is collected."""
        self.loader = None
