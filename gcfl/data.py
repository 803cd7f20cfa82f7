"""Datasets and client partitions.

Datasets: ``digits`` (scikit-learn's bundled handwritten digits, offline; the
default), ``mnist`` and ``cifar10`` (files in ``data-dir``, else Keras' cache,
else Keras' download) or an absolute path to an ``.npz`` file with ``x_train``,
``y_train``, ``x_test`` and ``y_test``. Pixels are scaled to [0, 1] and images
always have a channel axis.

Partitions: ``slices`` (the seed's overlapping contiguous slices of a shuffled
training set, each 2%-8% of it), ``iid`` and ``dirichlet`` (label skew).

Loaded datasets and partitions are cached per process: a Ray actor or app
process that trains many times loads them once.
"""

from __future__ import annotations

import functools
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gcfl.config import BUILTIN_DATASETS, PARTITIONS

SLICE_MIN_SHARE = 0.02
SLICE_MAX_SHARE = 0.08
# Distinct streams derived from the run seed, so that changing one consumer's
# draws (say, the partition) never shifts another's (the train/test split).
_SPLIT_STREAM, _PARTITION_STREAM, _CLIENT_SPLIT_STREAM = 1, 2, 3


class DatasetError(ValueError):
    """A dataset is missing, unreadable or malformed; the message names the file."""


@dataclass(frozen=True)
class Dataset:
    """A train/test split of images (N, H, W, C) in [0, 1] and integer labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


@dataclass(frozen=True)
class ClientData:
    """One client's local training and validation data."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def _images(x: np.ndarray, source: str) -> np.ndarray:
    """Images as float32 in [0, 1] with a channel axis."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise DatasetError(f"{source}: images must be (N, H, W) or (N, H, W, C), got {x.shape}")
    scale = 255.0 if x.dtype == np.uint8 or float(np.max(x, initial=0.0)) > 1.0 else 1.0
    return (x.astype(np.float32) / np.float32(scale)).astype(np.float32)


def _labels(y: np.ndarray, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = np.argmax(y, axis=1)  # one-hot
    y = y.reshape(-1)
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.equal(np.mod(y, 1), 0)):
        raise DatasetError(f"{source}: labels must be integers")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DatasetError(f"{source}: labels must be >= 0")
    return y


def _assemble(name: str, x_tr, y_tr, x_te, y_te, source: str) -> Dataset:
    x_train, x_test = _images(x_tr, source), _images(x_te, source)
    y_train, y_test = _labels(y_tr, source), _labels(y_te, source)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DatasetError(
            f"{source}: x_train/y_train or x_test/y_test lengths differ "
            f"({len(x_train)}/{len(y_train)}, {len(x_test)}/{len(y_test)})"
        )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"{source}: train images {x_train.shape[1:]} and test images "
            f"{x_test.shape[1:]} differ in shape"
        )
    if len(x_train) == 0 or len(x_test) == 0:
        raise DatasetError(f"{source}: the training or test set is empty")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes)


def load_digits_dataset(seed: int) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images), split 80/20 stratified by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images,
        bunch.target,
        test_size=0.2,
        stratify=bunch.target,
        random_state=int(np.random.SeedSequence([seed, _SPLIT_STREAM]).generate_state(1)[0]),
    )
    return _assemble("digits", x_tr, y_tr, x_te, y_te, "scikit-learn load_digits")


def load_npz_dataset(path: str | Path, name: str | None = None) -> Dataset:
    """Any ``.npz`` with ``x_train``, ``y_train``, ``x_test`` and ``y_test``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in archive]
            if missing:
                raise DatasetError(f"{path}: missing array(s) {', '.join(missing)}")
            arrays = [archive[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except DatasetError:
        raise
    except Exception as error:  # zipfile, pickle and format errors all mean "corrupt"
        raise DatasetError(f"{path}: not a readable .npz file ({error})") from error
    x_train, y_train, x_test, y_test = arrays
    return _assemble(name or path.stem, x_train, y_train, x_test, y_test, source=str(path))


def _keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def _candidate_dirs(data_dir: str) -> list[Path]:
    return ([Path(data_dir)] if data_dir else []) + [_keras_cache_dir()]


def _download_hint(file_name: str, data_dir: str) -> str:
    where = f"data-dir ({data_dir})" if data_dir else "a folder given as data-dir"
    return f"put {file_name} into {where} or {_keras_cache_dir()}"


def load_mnist_dataset(data_dir: str = "") -> Dataset:
    """MNIST from ``mnist.npz`` (Keras' format) in data-dir or Keras' cache, else download."""
    for folder in _candidate_dirs(data_dir):
        if (folder / "mnist.npz").is_file():
            return load_npz_dataset(folder / "mnist.npz", name="mnist")
    try:
        from keras.datasets import mnist

        (x_tr, y_tr), (x_te, y_te) = mnist.load_data()
    except Exception as error:
        raise DatasetError(
            f"mnist: mnist.npz not found and the download failed ({error}); "
            + _download_hint("mnist.npz", data_dir)
        ) from error
    return _assemble("mnist", x_tr, y_tr, x_te, y_te, "keras mnist")


def _cifar_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = pickle.loads(raw, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as error:
        raise DatasetError(f"{source}: not a CIFAR-10 python batch ({error})") from error
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = "test_batch"


def _cifar_from_batches(read, source: str) -> Dataset:
    """CIFAR-10 from its five training batches and test batch; ``read(name)`` gives bytes."""
    parts = [_cifar_batch(read(name), f"{source}/{name}") for name in _CIFAR_TRAIN]
    x_te, y_te = _cifar_batch(read(_CIFAR_TEST), f"{source}/{_CIFAR_TEST}")
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    return _assemble("cifar10", x_tr, y_tr, x_te, y_te, source)


def _read_cifar_dir(folder: Path) -> Dataset:
    def read(name: str) -> bytes:
        path = folder / name
        if not path.is_file():
            raise DatasetError(f"{path}: missing CIFAR-10 batch file")
        return path.read_bytes()

    return _cifar_from_batches(read, str(folder))


def _read_cifar_tar(path: Path) -> Dataset:
    try:
        with tarfile.open(path, "r:gz") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}

            def read(name: str) -> bytes:
                if name not in members:
                    raise DatasetError(f"{path}: archive has no {name}")
                handle = archive.extractfile(members[name])
                return handle.read() if handle else b""

            return _cifar_from_batches(read, str(path))
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DatasetError(f"{path}: not a readable cifar-10-python.tar.gz ({error})") from error


def load_cifar10_dataset(data_dir: str = "") -> Dataset:
    """CIFAR-10 from ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``, else download."""
    for folder in _candidate_dirs(data_dir):
        if (folder / "cifar-10-batches-py").is_dir():
            return _read_cifar_dir(folder / "cifar-10-batches-py")
        if (folder / "cifar-10-python.tar.gz").is_file():
            return _read_cifar_tar(folder / "cifar-10-python.tar.gz")
    try:
        from keras.datasets import cifar10

        (x_tr, y_tr), (x_te, y_te) = cifar10.load_data()
    except Exception as error:
        raise DatasetError(
            f"cifar10: cifar-10-batches-py/ not found and the download failed ({error}); "
            + _download_hint(
                "cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/)", data_dir
            )
        ) from error
    return _assemble("cifar10", x_tr, y_tr, x_te, y_te, "keras cifar10")


@functools.lru_cache(maxsize=2)
def load_dataset(name: str, data_dir: str = "", seed: int = 42) -> Dataset:
    """Load a dataset by run-config name (cached per process)."""
    if name == "digits":
        return load_digits_dataset(seed)
    if name == "mnist":
        return load_mnist_dataset(data_dir)
    if name == "cifar10":
        return load_cifar10_dataset(data_dir)
    if name.endswith(".npz"):
        return load_npz_dataset(name)
    raise DatasetError(
        f"dataset: unknown {name!r}; use {', '.join(BUILTIN_DATASETS)} or a path to a .npz"
    )


def _slices(num_train: int, num_partitions: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(num_train)
    low = max(1, int(np.ceil(SLICE_MIN_SHARE * num_train)))
    high = max(low + 1, int(SLICE_MAX_SHARE * num_train))
    parts = []
    for _ in range(num_partitions):
        length = int(rng.integers(low, high))
        start = int(rng.integers(0, num_train - length + 1))
        parts.append(order[start : start + length])
    return parts


def _dirichlet(
    labels: np.ndarray, num_partitions: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(num_partitions, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, cuts), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(chunks)) for chunks in parts]


MIN_CLIENT_SAMPLES = 2
_DIRICHLET_TRIES = 100


def partition_indices(
    kind: str,
    labels: np.ndarray,
    num_partitions: int,
    seed: int,
    alpha: float = 0.5,
) -> list[np.ndarray]:
    """Training-set indices of every partition.

    Every partition gets at least ``MIN_CLIENT_SAMPLES`` samples (one to train,
    one to validate) or a :class:`DatasetError` says which setting to change.
    """
    if kind not in PARTITIONS:
        raise DatasetError(f"partition: unknown {kind!r}; use {', '.join(PARTITIONS)}")
    if num_partitions < 1:
        raise DatasetError(f"num-partitions must be >= 1, got {num_partitions}")
    rng = np.random.default_rng([seed, _PARTITION_STREAM])
    num_train = len(labels)
    if kind == "slices":
        parts = _slices(num_train, num_partitions, rng)
    elif kind == "iid":
        parts = np.array_split(rng.permutation(num_train), num_partitions)
    else:
        for _ in range(_DIRICHLET_TRIES):
            parts = _dirichlet(labels, num_partitions, alpha, rng)
            if min(len(p) for p in parts) >= MIN_CLIENT_SAMPLES:
                break
        else:
            raise DatasetError(
                f"partition 'dirichlet' with alpha={alpha} left a client with fewer than "
                f"{MIN_CLIENT_SAMPLES} of {num_train} training samples in {_DIRICHLET_TRIES} "
                "draws; raise alpha or use fewer clients"
            )
    smallest = min(range(num_partitions), key=lambda p: len(parts[p]))
    if len(parts[smallest]) < MIN_CLIENT_SAMPLES:
        raise DatasetError(
            f"partition {kind!r} gives client {smallest} {len(parts[smallest])} of "
            f"{num_train} training samples (at least {MIN_CLIENT_SAMPLES} are needed for a "
            "validation split); use fewer clients, a larger dataset or partition 'slices'"
        )
    return [np.asarray(p, dtype=np.int64) for p in parts]


@functools.lru_cache(maxsize=4)
def cached_partitions(
    name: str, data_dir: str, seed: int, kind: str, num_partitions: int, alpha: float
) -> tuple[np.ndarray, ...]:
    dataset = load_dataset(name, data_dir, seed)
    return tuple(partition_indices(kind, dataset.y_train, num_partitions, seed, alpha))


def split_train_val(
    x: np.ndarray, y: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> ClientData:
    """Shuffle and hold out ``val_fraction`` (at least one sample, never all)."""
    order = rng.permutation(len(x))
    num_val = min(max(1, round(len(x) * val_fraction)), len(x) - 1)
    val, train = order[:num_val], order[num_val:]
    return ClientData(x[train], y[train], x[val], y[val])


def client_data(
    name: str,
    data_dir: str,
    seed: int,
    partition: str,
    alpha: float,
    partition_id: int,
    num_partitions: int,
    val_fraction: float,
) -> ClientData:
    """The local data of client ``partition_id``: its partition, split into train/validation."""
    if not 0 <= partition_id < num_partitions:
        raise DatasetError(
            f"partition-id {partition_id} is outside [0, {num_partitions}) (num-partitions)"
        )
    dataset = load_dataset(name, data_dir, seed)
    indices = cached_partitions(name, data_dir, seed, partition, num_partitions, alpha)[
        partition_id
    ]
    rng = np.random.default_rng([seed, _CLIENT_SPLIT_STREAM, partition_id])
    return split_train_val(dataset.x_train[indices], dataset.y_train[indices], val_fraction, rng)
