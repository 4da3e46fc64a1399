"""One pool of labelled images split into train / val / test reproducibly, for data that names no splits (an
ImageFolder without split folders, a CSV without a split column): the options such a format takes, the split, and
the record of it that the task's meta keeps."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from vlprompt.core.config import ValidatedConfig, option
from vlprompt.core.errors import ConfigError
from vlprompt.data.formats.parsed import Sample
from vlprompt.data.formats.splits import OPTIONAL_ROLE

# What seeded_split does, in words: an ImageFolder task records it in its meta.
SEEDED_SPLIT_RULE = (
    "per class: sort by path, shuffle with Random(f'{seed}:{label}'), "
    "first round(n*test_fraction) -> test, next round(n*val_fraction) -> val, rest -> train"
)


@dataclass
class SeededSplitOptions(ValidatedConfig):
    """The options of a seeded split; a format whose data may name no splits derives its options from these."""

    val_fraction: float = option(
        0.1, help="share of each class held out for validation when the data names no splits", range=(0.0, 1.0))
    test_fraction: float = option(
        0.2, help="share of each class held out for testing when the data names no splits", range=(0.0, 1.0))
    seed: int = option(0, help="seed of the split of data that names no splits")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"{self.config_name}: val_fraction + test_fraction must stay below 1 so that training keeps images; "
                f"got {self.val_fraction} + {self.test_fraction}."
            )


def split_pool(pool: Sequence[Sample], options: SeededSplitOptions) -> tuple[dict[str, list[Sample]], dict]:
    """(the splits of ``pool``, an empty val split left out; the record of how they were drawn, for the task's
    ``meta["seeded_split"]``)."""
    parts = seeded_split(pool, options.val_fraction, options.test_fraction, options.seed)
    splits = {role: samples for role, samples in parts.items() if samples or role != OPTIONAL_ROLE}
    record = {"seed": options.seed, "val_fraction": options.val_fraction, "test_fraction": options.test_fraction}
    return splits, record


def seeded_split(
    samples: Sequence[Sample], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """Split one pool per class into train/val/test, reproducibly from ``seed``.

    Each class is sorted by path, shuffled with its own RNG seeded by (seed, label), and cut into
    round(n*test_fraction) test and round(n*val_fraction) val images; at least one image always stays in train.
    """
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        pool = sorted(by_class[label], key=lambda s: s.path)
        random.Random(f"{seed}:{label}").shuffle(pool)
        n = len(pool)
        n_test = min(round(n * test_fraction), n - 1)
        n_val = min(round(n * val_fraction), n - 1 - n_test)
        out["test"] += pool[:n_test]
        out["val"] += pool[n_test : n_test + n_val]
        out["train"] += pool[n_test + n_val :]
    for samples_of_split in out.values():
        samples_of_split.sort(key=lambda s: (s.label, s.path))
    return out
