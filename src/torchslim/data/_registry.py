"""The dataset registry, :func:`load_dataset` and :class:`SlimDataset`.

A dataset is a loader function registered by name. The loader takes keyword options and returns
``(inputs, labels, meta)``: one array of all samples, one array of integer labels ``0..K-1``, and a
dict that may name the classes (``meta["classes"]``). :func:`load_dataset` caches what the loader
returns, splits it into train and test (stratified, deterministic by ``seed``) and wraps the chosen
part in a :class:`SlimDataset`, a plain map-style :class:`torch.utils.data.Dataset`::

    @register_dataset("blobs", description="two Gaussian blobs", extra=None)
    def _blobs(num_samples: int = 100):
        ...
        return inputs, labels, {"classes": ["left", "right"]}

    train = load_dataset("blobs", "train", num_samples=200)
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from torchslim.errors import ConfigError, DatasetError

__all__ = ["SlimDataset", "register_dataset", "list_datasets", "load_dataset", "SPLITS"]

_logger = logging.getLogger(__name__)

#: The values ``load_dataset(split=...)`` accepts.
SPLITS = ("train", "test", "all")

Loader = Callable[..., tuple[Any, Any, dict[str, Any]]]


@dataclass(frozen=True)
class _Entry:
    name: str
    loader: Loader
    description: str
    extra: str | None  # the ``torchslim[extra]`` that provides the loader's dependencies


_DATASETS: dict[str, _Entry] = {}


def register_dataset(name: str, *, description: str, extra: str | None) -> Callable:
    """Decorator: register ``fn(**options) -> (inputs, labels, meta)`` as dataset ``name``.

    The loader must be deterministic in its options (its result is cached per option set) and
    must not download anything. ``inputs`` has one row per sample, ``labels`` holds integer class
    ids ``0..K-1``, and ``meta`` may give ``"classes"`` (K names). Optional dependencies are
    imported inside the loader with :func:`torchslim._extras.require`.

    Args:
        name: Registry name, as passed to :func:`load_dataset`.
        description: One line on what the dataset is.
        extra: The ``torchslim[extra]`` that installs the loader's dependencies, or ``None``.

    Raises:
        ConfigError: another loader is already registered under ``name``.
    """

    def decorator(fn: Loader) -> Loader:
        if name in _DATASETS and _DATASETS[name].loader is not fn:
            raise ConfigError(f"a dataset named {name!r} is already registered")
        _DATASETS[name] = _Entry(name, fn, description, extra)
        return fn

    return decorator


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return sorted(_DATASETS)


class SlimDataset(Dataset):
    """A map-style dataset of ``(input, label)`` pairs: float32 input tensors, int64 labels.

    Each :func:`load_dataset` call returns a new instance with its own tensors, so changing them
    changes nothing else.

    Attributes:
        name: The registry name of the dataset.
        split: ``"train"``, ``"test"`` or ``"all"``.
        classes: Class names; label ``i`` means ``classes[i]``.
        num_classes: ``len(classes)``.
        input_shape: The shape of one input, e.g. ``(1, 28, 28)``.
        indices: For each sample, its position in the ``"all"`` split (an int64 tensor), so two
            splits of the same data can be compared.
        meta: Whatever else the loader reported (normalisation, generator settings).
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        name: str,
        split: str,
        classes: list[str],
        indices: torch.Tensor | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if len(inputs) != len(targets):
            raise DatasetError(f"dataset {name!r}: {len(inputs)} inputs but {len(targets)} labels")
        self._inputs = inputs.float()
        self._targets = targets.long()
        self.name = name
        self.split = split
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.input_shape: tuple[int, ...] = tuple(self._inputs.shape[1:])
        self.indices = torch.arange(len(targets)) if indices is None else indices
        self.meta = dict(meta or {})

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)``: all inputs stacked (N, *input_shape) and all labels (N,)."""
        return self._inputs, self._targets

    def __len__(self) -> int:
        return len(self._targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._inputs[index], self._targets[index]

    def __repr__(self) -> str:
        return (
            f"SlimDataset(name={self.name!r}, split={self.split!r}, samples={len(self)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


def _entry(name: str) -> _Entry:
    if name in _DATASETS:
        return _DATASETS[name]
    known = list_datasets()
    close = difflib.get_close_matches(str(name), known, n=3)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise DatasetError(
        f"unknown dataset {name!r}; {hint}known datasets: {', '.join(known)} "
        "(register more with @torchslim.data.register_dataset)"
    )


def _frozen(value: Any, where: str) -> Hashable:
    """Make an option value hashable (lists become tuples), so it can key the cache."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v, where) for v in value)
    try:
        hash(value)
    except TypeError:
        raise DatasetError(
            f"{where} is a {type(value).__name__}, which cannot key the dataset cache; "
            "pass numbers, strings or tuples"
        ) from None
    return value


def _option_key(entry: _Entry, options: dict[str, Any]) -> tuple[tuple[str, Hashable], ...]:
    """Bind ``options`` to the loader's signature, defaults filled in, as a hashable key."""
    signature = inspect.signature(entry.loader)
    try:
        bound = signature.bind(**options)
    except TypeError:
        accepted = [p.name for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        unknown = sorted(set(options) - set(accepted))
        raise DatasetError(
            f"dataset {entry.name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(accepted) or '(none)'}"
        ) from None
    bound.apply_defaults()
    return tuple(
        (k, _frozen(v, f"option {k}={v!r} of dataset {entry.name!r}"))
        for k, v in sorted(bound.arguments.items())
    )


@functools.lru_cache(maxsize=8)
def _load_raw(
    name: str, key: tuple[tuple[str, Hashable], ...]
) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any]]:
    """Run the loader once per option set; the arrays come back read-only."""
    entry = _DATASETS[name]
    inputs, labels, meta = entry.loader(**dict(key))
    inputs = np.ascontiguousarray(_numpy(inputs), dtype=np.float32)
    labels = _numpy(labels)
    if labels.ndim != 1 or len(labels) != len(inputs) or len(labels) == 0:
        raise DatasetError(
            f"the loader of dataset {name!r} returned inputs of shape {inputs.shape} and labels "
            f"of shape {labels.shape}; it must return N inputs and N labels, N > 0"
        )
    if not np.issubdtype(labels.dtype, np.integer) and not np.all(labels == np.round(labels)):
        raise DatasetError(f"the loader of dataset {name!r} returned non-integer labels")
    labels = labels.astype(np.int64)
    classes = [str(c) for c in meta.get("classes", range(int(labels.max()) + 1))]
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DatasetError(
            f"the loader of dataset {name!r} returned labels in [{labels.min()}, {labels.max()}] "
            f"but {len(classes)} classes; labels must lie in 0..{len(classes) - 1}"
        )
    inputs.setflags(write=False)
    labels.setflags(write=False)
    meta = {k: v for k, v in meta.items() if k != "classes"}
    _logger.debug("loaded dataset %s%s: %d samples", name, dict(key), len(labels))
    return inputs, labels, classes, meta


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, test)`` positions: each class puts ``round(fraction * count)`` in test.

    The same labels, fraction and seed give the same split; the two parts are disjoint and
    together cover every position.
    """
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_test = int(round(test_fraction * len(members)))
        test_parts.append(rng.permutation(members)[:n_test])
    test = np.sort(np.concatenate(test_parts))
    train = np.setdiff1d(np.arange(len(labels)), test, assume_unique=True)
    return train, test


def load_dataset(
    name: str,
    split: str = "train",
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    **options: Any,
) -> SlimDataset:
    """Load a registered dataset, or one split of it, as a :class:`SlimDataset`.

    The loader runs once per option set in a process (later calls reuse its arrays); every call
    returns a new dataset with its own tensors.

    Args:
        name: A name from :func:`list_datasets`.
        split: ``"train"``, ``"test"`` or ``"all"``. Train and test are disjoint and together
            make ``"all"``.
        test_fraction: Share of each class that goes to the test split, in (0, 1).
        seed: Seeds the stratified split: the same seed gives the same split. It does not
            change the data; generated datasets take a ``data_seed`` option for that.
        **options: Passed to the dataset's loader (e.g. ``num_samples=2000``).

    Raises:
        DatasetError: unknown dataset or option (the message lists the known ones).
        ConfigError: invalid ``split`` or ``test_fraction``, or a split that would be empty.
        MissingExtraError: the dataset needs an optional package that is not installed.
    """
    entry = _entry(name)
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {', '.join(map(repr, SPLITS))}")
    if isinstance(test_fraction, bool) or not (
        isinstance(test_fraction, int | float) and 0.0 < test_fraction < 1.0
    ):
        raise ConfigError(
            f"test_fraction={test_fraction!r} must be a number strictly between 0 and 1, e.g. 0.2"
        )
    key = _option_key(entry, options)
    inputs, labels, classes, meta = _load_raw(entry.name, key)
    if split == "all":
        positions = np.arange(len(labels))
    else:
        train, test = _stratified_split(labels, test_fraction, seed)
        positions = train if split == "train" else test
        if len(positions) == 0:
            raise ConfigError(
                f"test_fraction={test_fraction} leaves the {split!r} split of dataset "
                f"{name!r} ({len(labels)} samples) empty; choose a fraction nearer 0.5"
            )
    return SlimDataset(
        torch.from_numpy(inputs[positions]),  # fancy indexing copies: the cache stays untouched
        torch.from_numpy(labels[positions]),
        name=entry.name,
        split=split,
        classes=classes,
        indices=torch.from_numpy(positions.astype(np.int64)),
        meta={**meta, "options": dict(key)},
    )
