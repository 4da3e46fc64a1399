"""The frozen-feature cache: exact features, augmented views, on-disk keys, atomic writes, damaged files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vlprompt.core.errors import ConfigError
from vlprompt.data import features as feature_cache
from vlprompt.data.base import ImageDataset
from vlprompt.data.features import encode_dataset

KEY = {"backbone": "tiny:test", "weights": "abc123", "transform": "eval"}


def make_dataset(n: int = 10, transform=None, name: str = "toy") -> ImageDataset:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(n)]
    return ImageDataset(
        [f"img/{i:03d}.png" for i in range(n)],
        [i % 3 for i in range(n)],
        lambda source: Image.fromarray(arrays[int(source[4:7])]),
        transform or T.ToTensor(),
        name,
    )


class CountingEncoder:
    """A fixed random projection of the pixels that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.weight = torch.randn(3 * 8 * 8, 5, generator=torch.Generator().manual_seed(0))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return images.flatten(1) @ self.weight


def test_exact_features_match_direct_encoding():
    dataset = make_dataset()
    encoder = CountingEncoder()
    got = encode_dataset(encoder, dataset, batch_size=4)
    direct = encoder(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    assert got.shape == (10, 5)
    torch.testing.assert_close(got, direct)


def test_disk_cache_is_read_back_without_encoding(tmp_path):
    dataset = make_dataset()
    encoder = CountingEncoder()
    first = encode_dataset(encoder, dataset, batch_size=4, cache_dir=tmp_path, cache_key=KEY)
    calls = encoder.calls
    second = encode_dataset(encoder, dataset, batch_size=4, cache_dir=tmp_path, cache_key=KEY)
    assert encoder.calls == calls
    assert torch.equal(first, second)
    assert len(list(tmp_path.glob("features-*.safetensors"))) == 1
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize(
    "change",
    ["backbone", "weights", "data", "labels", "transform"],
)
def test_cache_is_invalidated_by_any_part_of_its_key(tmp_path, change):
    dataset, key = make_dataset(), dict(KEY)
    encoder = CountingEncoder()
    encode_dataset(encoder, dataset, cache_dir=tmp_path, cache_key=key)
    if change in ("backbone", "weights"):
        key[change] = "other"
    elif change == "data":
        dataset = dataset.subset([0, 2, 1, 3, 4, 5, 6, 7, 8, 9])
    elif change == "labels":
        dataset.labels = [0] * len(dataset)
    else:
        dataset = dataset.with_transform(T.Compose([T.Resize(8), T.ToTensor()]))
    calls = encoder.calls
    encode_dataset(encoder, dataset, cache_dir=tmp_path, cache_key=key)
    assert encoder.calls > calls
    assert len(list(tmp_path.glob("features-*.safetensors"))) == 2


def test_truncated_cache_file_is_rebuilt(tmp_path, caplog):
    dataset, encoder = make_dataset(), CountingEncoder()
    expected = encode_dataset(encoder, dataset, cache_dir=tmp_path, cache_key=KEY)
    (path,) = tmp_path.glob("features-*.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 17])
    calls = encoder.calls
    got = encode_dataset(encoder, dataset, cache_dir=tmp_path, cache_key=KEY)
    assert encoder.calls > calls
    torch.testing.assert_close(got, expected)
    assert "rebuilding" in caplog.text


def test_cache_file_of_another_backbone_under_this_name_is_rebuilt(tmp_path, caplog):
    dataset, encoder = make_dataset(), CountingEncoder()
    encode_dataset(encoder, dataset, cache_dir=tmp_path, cache_key=KEY)
    (ours,) = tmp_path.glob("features-*.safetensors")
    other = CountingEncoder()
    other.weight = other.weight * 2
    other_dir = tmp_path / "other"
    encode_dataset(other, dataset, cache_dir=other_dir, cache_key={**KEY, "backbone": "another"})
    (theirs,) = other_dir.glob("features-*.safetensors")
    os.replace(theirs, ours)  # a stale or copied file sitting under our name
    got = encode_dataset(encoder, dataset, cache_dir=tmp_path, cache_key=KEY)
    torch.testing.assert_close(got, encode_dataset(encoder, dataset))
    assert "another backbone" in caplog.text


def test_flipped_bytes_fail_the_checksum(tmp_path, caplog):
    dataset, encoder = make_dataset(), CountingEncoder()
    expected = encode_dataset(encoder, dataset, cache_dir=tmp_path, cache_key=KEY)
    (path,) = tmp_path.glob("features-*.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    got = encode_dataset(encoder, dataset, cache_dir=tmp_path, cache_key=KEY)
    torch.testing.assert_close(got, expected)
    assert "checksum" in caplog.text


def test_interrupted_write_leaves_no_cache(tmp_path, monkeypatch):
    dataset, encoder = make_dataset(), CountingEncoder()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(feature_cache.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(encoder, dataset, cache_dir=tmp_path, cache_key=KEY)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    calls = encoder.calls
    encode_dataset(encoder, dataset, cache_dir=tmp_path, cache_key=KEY)
    assert encoder.calls > calls


def test_augmented_views_are_reproducible_and_differ(tmp_path):
    augment = T.Compose([T.RandomHorizontalFlip(), T.ToTensor()])
    dataset, encoder = make_dataset(), CountingEncoder()
    views = encode_dataset(encoder, dataset, views=4, augment=augment, seed=3)
    assert views.shape == (4, 10, 5)
    assert torch.equal(views, encode_dataset(encoder, dataset, views=4, augment=augment, seed=3))
    assert not torch.equal(views, encode_dataset(encoder, dataset, views=4, augment=augment, seed=4))
    assert not torch.equal(views[0], views[1])
    state = torch.random.get_rng_state()
    encode_dataset(encoder, dataset, views=2, augment=augment, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    cached = encode_dataset(encoder, dataset, views=4, augment=augment, seed=3, cache_dir=tmp_path, cache_key=KEY)
    assert torch.equal(cached, views)


def test_cache_dir_without_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cache_key"):
        encode_dataset(CountingEncoder(), make_dataset(), cache_dir=tmp_path)


def test_augmented_views_do_not_depend_on_the_worker_count():
    augment = T.Compose([T.RandomResizedCrop(8, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])
    dataset = make_dataset(n=9)
    here = encode_dataset(CountingEncoder(), dataset, batch_size=2, views=3, augment=augment, seed=5)
    workers = encode_dataset(CountingEncoder(), dataset, batch_size=2, views=3, augment=augment, seed=5,
                             num_workers=2)
    assert torch.equal(here, workers)
    assert not torch.equal(here[0], here[1])  # the views really are augmented differently
