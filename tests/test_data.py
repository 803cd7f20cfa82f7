"""Datasets in their real on-disk formats, and client partitions."""

import pickle
import tarfile

import numpy as np
import pytest

from gcfl.data import (
    DatasetError,
    client_data,
    load_cifar10_dataset,
    load_dataset,
    load_digits_dataset,
    load_mnist_dataset,
    load_npz_dataset,
    partition_indices,
    split_train_val,
)


@pytest.fixture(autouse=True)
def no_keras_cache(tmp_path, monkeypatch):
    """Point Keras' cache at an empty folder: no test may find or download real data."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))


def test_digits_is_an_offline_stratified_80_20_split():
    dataset = load_digits_dataset(seed=42)
    assert dataset.x_train.shape == (1437, 8, 8, 1) and dataset.x_test.shape == (360, 8, 8, 1)
    assert dataset.num_classes == 10
    assert dataset.x_train.min() >= 0.0 and dataset.x_train.max() <= 1.0
    train_share = np.bincount(dataset.y_train) / len(dataset.y_train)
    test_share = np.bincount(dataset.y_test) / len(dataset.y_test)
    np.testing.assert_allclose(train_share, test_share, atol=0.01)
    other = load_digits_dataset(seed=7)
    assert not np.array_equal(dataset.y_test, other.y_test)


def write_mnist_npz(path, n_train=12, n_test=4):
    generator = np.random.default_rng(0)
    np.savez(
        path,
        x_train=generator.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        y_train=generator.integers(0, 10, n_train, dtype=np.uint8),
        x_test=generator.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=np.arange(n_test, dtype=np.uint8),
    )


def test_mnist_from_data_dir(tmp_path):
    write_mnist_npz(tmp_path / "mnist.npz")
    dataset = load_mnist_dataset(str(tmp_path))
    assert dataset.x_train.shape == (12, 28, 28, 1)
    assert dataset.x_train.dtype == np.float32 and dataset.x_train.max() <= 1.0
    assert dataset.num_classes >= 4


def test_mnist_missing_offline_names_the_file_and_where(tmp_path, monkeypatch):
    import keras.datasets.mnist

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DatasetError, match=r"mnist\.npz.*data-dir"):
        load_mnist_dataset(str(tmp_path))


def cifar_batch(n, seed):
    generator = np.random.default_rng(seed)
    return pickle.dumps(
        {
            b"data": generator.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": list(generator.integers(0, 10, n)),
        }
    )


def write_cifar_dir(folder, n=3):
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(cifar_batch(n, i))
    (folder / "test_batch").write_bytes(cifar_batch(n, 99))


def test_cifar10_from_batches_folder(tmp_path):
    write_cifar_dir(tmp_path / "cifar-10-batches-py")
    dataset = load_cifar10_dataset(str(tmp_path))
    assert dataset.x_train.shape == (15, 32, 32, 3) and dataset.x_test.shape == (3, 32, 32, 3)
    # Channels-last from the channels-first rows, as Keras' loader does.
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    first = raw[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0) / 255.0
    np.testing.assert_allclose(dataset.x_train[0], first, rtol=1e-6)


def test_cifar10_from_tar_gz(tmp_path):
    source = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar_dir(source)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(source, arcname="cifar-10-batches-py")
    assert load_cifar10_dataset(str(tmp_path)).x_train.shape == (15, 32, 32, 3)


def test_cifar10_missing_batch_is_named(tmp_path):
    write_cifar_dir(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_cifar10_dataset(str(tmp_path))


def test_any_npz_with_grayscale_and_inferred_classes(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(
        path,
        x_train=np.random.rand(10, 9, 9),
        y_train=np.arange(10) % 3,
        x_test=np.random.rand(4, 9, 9),
        y_test=np.array([0, 1, 2, 2]),
    )
    dataset = load_dataset(str(path))
    assert dataset.input_shape == (9, 9, 1) and dataset.num_classes == 3


def test_npz_problems_name_the_file(tmp_path):
    missing_key = tmp_path / "partial.npz"
    np.savez(missing_key, x_train=np.zeros((2, 8, 8)), y_train=np.zeros(2))
    with pytest.raises(DatasetError, match=r"partial\.npz.*x_test, y_test"):
        load_npz_dataset(missing_key)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"corrupt\.npz"):
        load_npz_dataset(corrupt)
    with pytest.raises(DatasetError, match=r"absent\.npz: no such file"):
        load_npz_dataset(tmp_path / "absent.npz")


def test_slices_are_the_seeds_overlapping_2_to_8_percent():
    labels = np.zeros(50_000, dtype=np.int64)
    parts = partition_indices("slices", labels, 30, seed=1)
    assert len(parts) == 30
    assert all(1000 <= len(p) < 4000 for p in parts)
    assert partition_indices("slices", labels, 30, seed=1)[5].tolist() == parts[5].tolist()


def test_iid_covers_the_training_set_once():
    parts = partition_indices("iid", np.zeros(103, dtype=np.int64), 10, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))


def test_dirichlet_skews_labels():
    labels = np.repeat(np.arange(10), 100)
    parts = partition_indices("dirichlet", labels, 5, seed=0, alpha=0.1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    dominant = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert max(dominant) > 0.3


def test_too_many_clients_for_the_data_names_the_setting():
    with pytest.raises(DatasetError, match="use fewer clients"):
        partition_indices("iid", np.zeros(10, dtype=np.int64), 8, seed=0)


def test_every_client_gets_a_non_empty_validation_split():
    for partition_id in range(30):
        data = client_data("digits", "", 42, "slices", 0.5, partition_id, 30, 0.2)
        assert len(data.x_val) >= 1 and len(data.x_train) >= 1
    tiny = split_train_val(np.zeros((2, 1)), np.zeros(2), 0.2, np.random.default_rng(0))
    assert (len(tiny.x_train), len(tiny.x_val)) == (1, 1)


def test_partition_id_out_of_range_is_named():
    with pytest.raises(DatasetError, match="partition-id 5"):
        client_data("digits", "", 42, "slices", 0.5, 5, 5, 0.2)
