"""Image batches decoded by DataLoader workers, identical whatever the number of workers.

Decoding and augmenting JPEGs is what starves a ViT-B/16 on a GPU when it happens in the training process, so
both the training loop and the feature cache read images through worker processes. Their output must not
depend on how many workers there are or which one ran an item: every item's random draws (crop, flip) come
from torch's generator seeded by (seed, round, index) for that item alone — round is the epoch in training and
the view when caching augmented features — inside ``fork_rng``, so the caller's global RNG is never touched.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from vlprompt.core.seeding import derived_seed
from vlprompt.data.base import ImageDataset


class SeededItems(Dataset):
    """``dataset`` addressed by (round, index) keys; with a seed, item randomness is a function of the key."""

    def __init__(self, dataset: ImageDataset, seed: int | None) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        round_, index = key
        if self.seed is None:
            return self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(self.seed, round_, index))
            return self.dataset[index]


class _GivenBatches:
    """A batch sampler whose batches the owner sets before each pass (so persistent workers can be kept)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchLoader:
    """One DataLoader for many passes over explicitly given batches of dataset indices.

    ``num_workers`` = 0 decodes in this process. Workers persist across passes (no re-fork per epoch), and
    the loader draws its worker base seed from a private generator, so opening a pass never advances the
    global RNG that dropout and the resume state depend on.
    """

    def __init__(self, dataset: ImageDataset, *, seed: int | None, num_workers: int, pin_memory: bool = False,
                 persistent: bool = True) -> None:
        self._batches = _GivenBatches()
        self.loader = DataLoader(
            SeededItems(dataset, seed),
            batch_sampler=self._batches,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent and num_workers > 0,
            generator=torch.Generator().manual_seed(0),
        )

    def run(self, round_: int, batches: Iterable[Sequence[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) for each batch of indices, in order; ``round_`` salts the items' random draws."""
        self._batches.batches = [[(round_, int(i)) for i in batch] for batch in batches]
        return iter(self.loader)


def workers_for(num_workers: int, n_batches: int) -> int:
    """No worker processes for a single batch: forking them costs more than decoding it here."""
    return num_workers if n_batches > 1 else 0
