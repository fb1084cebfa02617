"""data: reading MNIST from its IDX files, and the messages of missing or damaged files."""
import gzip
import os
import shutil

import numpy as np
import pytest

from gaitprop.runs import data

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ----------------------------------------------------------------------------- load_dataset

def copy_mnist(source_root, data_root, files=MNIST_FILES):
    raw = os.path.join(data_root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for stem in files:
        shutil.copyfile(os.path.join(source_root, "MNIST", "raw", stem + ".gz"),
                        os.path.join(raw, stem + ".gz"))
    return raw


def read_idx(path, header):
    with gzip.open(path, "rb") as stream:
        return np.frombuffer(stream.read()[header:], dtype=np.uint8)


@pytest.fixture(scope="module")
def mnist_loaded(mnist_raw, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    copy_mnist(mnist_raw, root)
    return data.load_dataset("MNIST", root), mnist_raw


def test_load_mnist_shapes_and_values(mnist_loaded):
    ((x_train, y_train), (x_test, y_test)), _ = mnist_loaded
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == np.float64 and x_test.dtype == np.float64
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265,
                                             5851, 5949]
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974,
                                            1009]
    assert y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_load_mnist_equals_the_idx_files_in_stored_order(mnist_loaded):
    ((x_train, y_train), (x_test, y_test)), source = mnist_loaded
    raw = os.path.join(source, "MNIST", "raw")
    train = read_idx(os.path.join(raw, "train-images-idx3-ubyte.gz"), 16).reshape(60000, 784)
    test = read_idx(os.path.join(raw, "t10k-images-idx3-ubyte.gz"), 16).reshape(10000, 784)
    np.testing.assert_array_equal(x_train, train / 255.0)
    np.testing.assert_array_equal(x_test, test / 255.0)
    np.testing.assert_array_equal(y_train, read_idx(os.path.join(
        raw, "train-labels-idx1-ubyte.gz"), 8))
    np.testing.assert_array_equal(y_test, read_idx(os.path.join(
        raw, "t10k-labels-idx1-ubyte.gz"), 8))


def test_load_dataset_reports_missing_files(tmp_path):
    with pytest.raises(data.DataError) as caught:
        data.load_dataset("MNIST", str(tmp_path))
    message = str(caught.value)
    assert os.path.join(str(tmp_path), "MNIST", "raw") in message
    for stem in MNIST_FILES:
        assert stem in message


def test_a_data_set_that_cannot_be_had_leaves_no_folder_behind(tmp_path, monkeypatch):
    """No files and no network: the DataError names <data_dir>/MNIST/raw, and the folders the
    download attempt made (the data root, MNIST, raw) are gone again; nothing else is touched."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    root = tmp_path / "data"
    with pytest.raises(data.DataError) as caught:
        data.load_dataset("MNIST", str(root))
    assert os.path.join(str(root), "MNIST", "raw") in str(caught.value)
    assert not root.exists()
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "MNIST").mkdir()
    with pytest.raises(data.DataError):
        data.fetch_missing("MNIST", str(tmp_path / "keep"))
    assert os.listdir(tmp_path / "keep") == ["MNIST"]
    assert os.listdir(tmp_path / "keep" / "MNIST") == []


def test_load_dataset_names_only_the_missing_files(mnist_raw, tmp_path):
    raw = copy_mnist(mnist_raw, str(tmp_path), MNIST_FILES[1:])
    with pytest.raises(data.DataError) as caught:
        data.load_dataset("MNIST", str(tmp_path))
    message = str(caught.value)
    assert raw in message and "train-images-idx3-ubyte" in message
    for stem in MNIST_FILES[1:]:
        assert stem not in message


def test_load_dataset_rejects_truncated_gzip(mnist_raw, tmp_path):
    raw = copy_mnist(mnist_raw, str(tmp_path))
    damaged = os.path.join(raw, "train-labels-idx1-ubyte.gz")
    with open(damaged, "rb") as stream:
        content = stream.read()
    with open(damaged, "wb") as stream:
        stream.write(content[:len(content) // 2])
    with pytest.raises(data.DataError) as caught:
        data.load_dataset("MNIST", str(tmp_path))
    assert damaged in str(caught.value)
    assert not os.path.exists(os.path.join(raw, "train-labels-idx1-ubyte"))
    assert not os.path.exists(os.path.join(raw, "train-labels-idx1-ubyte.partial"))


def test_load_dataset_rejects_unknown_name(tmp_path):
    with pytest.raises(data.DataError) as caught:
        data.load_dataset("CIFAR", str(tmp_path))
    assert "CIFAR" in str(caught.value)


def test_load_dataset_rejects_truncated_unpacked_file(mnist_raw, tmp_path):
    raw = os.path.join(str(tmp_path), "MNIST", "raw")
    os.makedirs(raw)
    for stem in MNIST_FILES:
        with gzip.open(os.path.join(mnist_raw, "MNIST", "raw", stem + ".gz"), "rb") as stream:
            content = stream.read()
        if stem == "t10k-images-idx3-ubyte":
            content = content[:len(content) // 2]
        with open(os.path.join(raw, stem), "wb") as stream:
            stream.write(content)
    with pytest.raises(data.DataError) as caught:
        data.load_dataset("MNIST", str(tmp_path))
    message = str(caught.value)
    assert raw in message and "t10k-images-idx3-ubyte" in message


def test_the_validation_split_is_the_authors_held_out_set():
    """--validation=10000 holds out the authors' images: numpy.random.seed(42);
    numpy.random.choice(60000, size=10000, replace=False) (their run.py); the others stay
    in stored order; the two parts are disjoint and together the whole set."""
    saved = np.random.get_state()
    try:
        np.random.seed(42)
        authors = np.random.choice(60000, size=10000, replace=False)
    finally:
        np.random.set_state(saved)
    np.testing.assert_array_equal(data.validation_indices(60000, 10000), authors)
    assert list(authors[:5]) == [12628, 37730, 39991, 8525, 8279]
    images = np.arange(60000, dtype=float)[:, None] * np.ones((1, 3))
    labels = np.arange(60000) % 10
    (kept_images, kept_labels), (held_images, held_labels) = data.split_validation(
        (images, labels), 10000)
    kept = kept_images[:, 0].astype(int)
    held = held_images[:, 0].astype(int)
    np.testing.assert_array_equal(held, authors)
    assert len(kept) == 50000 and np.all(np.diff(kept) > 0)  # stored order
    assert set(kept).isdisjoint(held) and len(set(kept) | set(held)) == 60000
    np.testing.assert_array_equal(kept_labels, kept % 10)
    np.testing.assert_array_equal(held_labels, held % 10)


def test_other_validation_sizes_follow_the_same_rule():
    np.testing.assert_array_equal(data.validation_indices(60000, 5000),
                                  np.random.RandomState(42).choice(60000, 5000, replace=False))
    assert len(set(data.validation_indices(60000, 59000))) == 59000
