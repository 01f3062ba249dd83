"""NAS-Bench-201: its cell space, its tabular accuracies and its networks, built for real.

NAS-Bench-201 (Dong & Yang, ICLR 2020) trained every cell of a small space: a cell is a DAG of
four nodes (node 0 is the cell's input, node 3 its output); each of its six edges ``j -> i``
(``j < i``) carries one of five operations, and a node is the sum of its incoming edges, so the
space holds ``5**6 = 15,625`` cells. An architecture is written as the benchmark writes it::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

(node 1's edge from node 0, then node 2's from 0 and 1, then node 3's from 0, 1 and 2). The
network (the benchmark's ``TinyNetwork``) is a 3x3 conv stem with 16 channels and batch norm,
three stages of five cells (16, 32, 64 channels) with a ResNet basic block of stride 2 between
stages, then batch norm, ReLU, global average pooling and a linear classifier.

- :class:`NasBench201Table` reads the tabular file (accuracies after training; see
  ``../shared/data/README.md``), so strategies can be compared without training;
- the ``nas201`` search space draws the six edges as categorical parameters and builds the
  network (:class:`NasBench201Network`), so MACs and latency are measured on this machine;
- the ``nas201-table`` evaluator (:mod:`torchslim.search._nas201_eval`) returns the table's
  ``val_accuracy`` and ``test_accuracy`` (in %) for ``cifar10`` or ``cifar100``, and on request
  the network's ``params`` and ``macs`` and its ``latency_ms`` here.

A cell may have no path from its input to its output (every path holds a ``none``): the table
lists such cells (they train to chance), and the network builds and runs; it then ignores its
input and returns the same logits for every image.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.errors import ConfigError, DatasetError
from torchslim.search._space import SearchSpace, register_search_space

__all__ = [
    "NAS201_OPS",
    "NAS201_EDGES",
    "NasBench201Table",
    "NasBench201Space",
    "NasBench201Network",
    "NasBench201TableEvaluator",
    "parse_arch",
    "nas201_cost",
    "format_arch",
    "nas201_table_path",
]

_logger = logging.getLogger(__name__)

#: The five candidate operations of an edge, in the benchmark's order.
NAS201_OPS: tuple[str, ...] = (
    "none",
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
)
#: The six edges ``(node, source)`` in the order the architecture string lists them.
NAS201_EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
#: The search space's parameter name of each edge (``edge_<node>_<source>``).
EDGE_PARAMS: tuple[str, ...] = tuple(f"edge_{i}_{j}" for i, j in NAS201_EDGES)

TABLE_FILE = "nasbench201_cifar.csv"
DATASETS: dict[str, int] = {"cifar10": 10, "cifar100": 100}  # name -> classes
_COLUMNS = ("cifar10-val", "cifar10-test", "cifar100-val", "cifar100-test")
# src/torchslim/search/_nas201.py -> the project root, whose sibling ``shared/`` holds the data
_PROJECT_ROOT = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------- architecture strings
def parse_arch(arch: str) -> tuple[str, ...]:
    """The six operations of an architecture string, in :data:`NAS201_EDGES` order."""
    if not isinstance(arch, str):
        raise ConfigError(f"a NAS-Bench-201 architecture is a string, got {type(arch).__name__}")
    nodes = arch.split("+")
    if len(nodes) != 3:
        raise ConfigError(
            f"NAS-Bench-201 architecture {arch!r} must list 3 nodes separated by '+', like "
            f"{format_arch(('nor_conv_3x3',) * 6)!r}"
        )
    ops: list[str] = []
    for node, text in enumerate(nodes, start=1):
        if not (text.startswith("|") and text.endswith("|")):
            raise ConfigError(f"node {node} of {arch!r} must be written |op~src|...|, got {text!r}")
        edges = text[1:-1].split("|")
        if len(edges) != node:
            raise ConfigError(f"node {node} of {arch!r} needs {node} edge(s), got {len(edges)}")
        for source, edge in enumerate(edges):
            op, _, src = edge.partition("~")
            if op not in NAS201_OPS:
                raise ConfigError(
                    f"unknown operation {op!r} in {arch!r}; known: {', '.join(NAS201_OPS)}"
                )
            if src != str(source):
                raise ConfigError(
                    f"edge {edge!r} of node {node} in {arch!r} must come from node {source}"
                )
            ops.append(op)
    return tuple(ops)


def format_arch(ops: Sequence[str]) -> str:
    """The architecture string of six operations (the inverse of :func:`parse_arch`)."""
    ops = tuple(ops)
    if len(ops) != len(NAS201_EDGES):
        raise ConfigError(f"a NAS-Bench-201 cell has 6 edges, got {len(ops)} operations: {ops}")
    unknown = [op for op in ops if op not in NAS201_OPS]
    if unknown:
        raise ConfigError(f"unknown operations {unknown}; known: {', '.join(NAS201_OPS)}")
    nodes: list[list[str]] = [[], [], []]
    for op, (node, source) in zip(ops, NAS201_EDGES, strict=True):
        nodes[node - 1].append(f"{op}~{source}")
    return "+".join("|" + "|".join(edges) + "|" for edges in nodes)


def _config_ops(config: Mapping[str, Any] | str | Sequence[str]) -> tuple[str, ...]:
    """The operations of a config (its ``arch``, else its edge parameters), a string or a list."""
    if isinstance(config, str):
        return parse_arch(config)
    if isinstance(config, Mapping):
        if "arch" in config:
            return parse_arch(config["arch"])
        missing = [name for name in EDGE_PARAMS if name not in config]
        if missing:
            raise ConfigError(
                f"a nas201 config needs 'arch' or the edges {list(EDGE_PARAMS)}; "
                f"missing {missing} in {dict(config)}"
            )
        return parse_arch(format_arch([config[name] for name in EDGE_PARAMS]))
    return parse_arch(format_arch(config))


# ---------------------------------------------------------------------------------- the table
def nas201_table_path(path: str | os.PathLike | None = None) -> Path:
    """Where the table is read from: ``path`` (the CSV, or a folder holding it), else
    ``$TORCHSLIM_DATA_DIR/nasbench201_cifar.csv``, else ``<project root>/../shared/data/``."""
    if path is not None:
        p = Path(path).expanduser()
        return p / TABLE_FILE if p.is_dir() else p
    env = os.environ.get("TORCHSLIM_DATA_DIR")
    if env:
        return Path(env).expanduser() / TABLE_FILE
    return _PROJECT_ROOT.parent / "shared" / "data" / TABLE_FILE


_TABLES: dict[tuple[str, int], NasBench201Table] = {}


class NasBench201Table:
    """The NAS-Bench-201 accuracies of every cell, read from a CSV file.

    Columns: ``index``, ``arch`` and the top-1 accuracies (%) ``cifar10-val``, ``cifar10-test``,
    ``cifar100-val``, ``cifar100-test``. Use :meth:`load` to share one parsed copy per file.

    Args:
        path: The CSV file, or a folder holding ``nasbench201_cifar.csv``; by default
            ``$TORCHSLIM_DATA_DIR``, else ``../shared/data/`` next to the project root.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = nas201_table_path(path)
        if not self.path.is_file():
            origin = (
                "the path given"
                if path is not None
                else "$TORCHSLIM_DATA_DIR"
                if os.environ.get("TORCHSLIM_DATA_DIR")
                else "the default location"
            )
            raise DatasetError(
                f"NAS-Bench-201 table not found at {self.path} ({origin}); put "
                f"{TABLE_FILE} there, set TORCHSLIM_DATA_DIR to the folder that holds it, or "
                f"pass its path (NasBench201Table(path=...), evaluator option path=...)"
            )
        archs, index, values = [], [], {c: [] for c in _COLUMNS}
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [
                c for c in ("index", "arch", *_COLUMNS) if c not in (reader.fieldnames or ())
            ]
            if missing:
                raise DatasetError(f"{self.path} lacks the column(s) {missing}")
            self._rows: dict[tuple[str, ...], int] = {}
            for row in reader:
                try:
                    ops = parse_arch(row["arch"])
                    numbers = [int(row["index"])] + [float(row[c]) for c in _COLUMNS]
                except (TypeError, ValueError) as exc:  # ConfigError is a ValueError
                    raise DatasetError(
                        f"{self.path}, line {reader.line_num}: bad row ({exc})"
                    ) from exc
                if ops in self._rows:
                    raise DatasetError(f"{self.path}: architecture {row['arch']} appears twice")
                self._rows[ops] = len(archs)
                archs.append(row["arch"])
                index.append(numbers[0])
                for c, value in zip(_COLUMNS, numbers[1:], strict=True):
                    values[c].append(value)
        self.archs: tuple[str, ...] = tuple(archs)
        self.index = np.asarray(index, dtype=np.int64)
        self._values = {c: np.asarray(v, dtype=np.float64) for c, v in values.items()}
        _logger.debug("read %d NAS-Bench-201 architectures from %s", len(self), self.path)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> NasBench201Table:
        """The table of ``path``, parsed once per process (reparsed when the file changes)."""
        resolved = nas201_table_path(path)
        key = (str(resolved.resolve()), resolved.stat().st_mtime_ns if resolved.is_file() else 0)
        if key not in _TABLES:
            _TABLES[key] = cls(path)
        return _TABLES[key]

    def __len__(self) -> int:
        return len(self.archs)

    def __contains__(self, arch: object) -> bool:
        try:
            return _config_ops(arch) in self._rows  # type: ignore[arg-type]
        except ConfigError:
            return False

    def row_of(self, arch: str | Sequence[str] | Mapping[str, Any]) -> int:
        """The table row (0-based position) of an architecture string, op list or config."""
        ops = _config_ops(arch)
        if ops not in self._rows:
            raise DatasetError(f"architecture {format_arch(ops)} is not in {self.path}")
        return self._rows[ops]

    def column(self, name: str) -> np.ndarray:
        """One accuracy column (``cifar10-val``, ...) as an array in row order (read-only)."""
        if name not in self._values:
            raise ConfigError(f"unknown column {name!r}; known: {', '.join(_COLUMNS)}")
        out = self._values[name].view()
        out.flags.writeable = False
        return out

    def row(self, arch: str | Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
        """Every column of one architecture: ``index``, ``arch`` and the four accuracies."""
        i = self.row_of(arch)
        out: dict[str, Any] = {"index": int(self.index[i]), "arch": self.archs[i]}
        out.update({c: float(self._values[c][i]) for c in _COLUMNS})
        return out

    def query(self, arch: str | Sequence[str] | Mapping[str, Any], dataset: str = "cifar10"):
        """``{"val_accuracy", "test_accuracy"}`` (%) of an architecture on ``dataset``."""
        _check_dataset(dataset)
        i = self.row_of(arch)
        return {
            "val_accuracy": float(self._values[f"{dataset}-val"][i]),
            "test_accuracy": float(self._values[f"{dataset}-test"][i]),
        }

    def best(self, column: str) -> tuple[str, float]:
        """The architecture with the highest value of ``column``, and that value."""
        values = self.column(column)
        i = int(np.argmax(values))
        return self.archs[i], float(values[i])


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ConfigError(f"unknown NAS-Bench-201 dataset {dataset!r}; known: {sorted(DATASETS)}")


# ------------------------------------------------------------------------------- the network
class ReLUConvBN(nn.Sequential):
    """ReLU, convolution without bias, batch norm: NAS-Bench-201's ``nor_conv`` operations."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out),
        )


class Zero(nn.Module):
    """The ``none`` operation: zeros shaped like the input (the benchmark computes ``x * 0``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def _operation(op: str, channels: int) -> nn.Module:
    if op == "none":
        return Zero()
    if op == "skip_connect":
        return nn.Identity()
    if op == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1)
    if op == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3)
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ConfigError(f"unknown operation {op!r}; known: {', '.join(NAS201_OPS)}")


class Cell(nn.Module):
    """One cell: node ``i`` is the sum of ``edges[k](node j)`` over its incoming edges ``j -> i``;
    the cell returns node 3. Every edge runs, as in the benchmark's code."""

    def __init__(self, ops: Sequence[str], channels: int) -> None:
        super().__init__()
        self.ops = tuple(ops)
        self.edges = nn.ModuleList(_operation(op, channels) for op in self.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        k = 0
        for node in range(1, 4):
            total = self.edges[k](nodes[0])
            for source in range(1, node):
                total = total + self.edges[k + source](nodes[source])
            k += node
            nodes.append(total)
        return nodes[3]

    def extra_repr(self) -> str:
        return format_arch(self.ops)


class ResidualReduction(nn.Module):
    """The ResNet basic block of stride 2 between stages (two ReLU-conv-BN 3x3 convolutions; the
    shortcut is a 2x2 average pool followed by a 1x1 convolution)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2), nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.downsample(x)


class NasBench201Network(nn.Module):
    """The NAS-Bench-201 network of one cell (the benchmark's ``TinyNetwork``); returns logits.

    Args:
        arch: Architecture string, or the six operations in :data:`NAS201_EDGES` order.
        num_classes: Classifier outputs (10 for CIFAR-10, 100 for CIFAR-100).
        channels: Width of the first stage (the benchmark: 16); stages double it.
        cells_per_stage: Cells per stage (the benchmark: 5).
    """

    def __init__(
        self,
        arch: str | Sequence[str],
        num_classes: int = 10,
        channels: int = 16,
        cells_per_stage: int = 5,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("channels", channels),
            ("cells_per_stage", cells_per_stage),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        self.ops = _config_ops(arch)
        self.arch = format_arch(self.ops)
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        cells: list[nn.Module] = []
        width = channels
        for stage in range(3):
            if stage:
                cells.append(ResidualReduction(width, width * 2))
                width *= 2
            cells.extend(Cell(self.ops, width) for _ in range(cells_per_stage))
        self.cells = nn.Sequential(*cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU())
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lastact(self.cells(self.stem(x)))
        return self.classifier(torch.flatten(self.global_pooling(x), 1))


# --------------------------------------------------------------------------------- the space
@register_search_space("nas201")
class NasBench201Space(SearchSpace):
    """The 15,625 cells of NAS-Bench-201: six categorical parameters ``edge_<node>_<source>``
    over the five operations. Config: ``{"arch": <string>, "edge_1_0": <op>, ...}``.

    Args:
        num_classes: Classes of the networks :meth:`build` returns (10: CIFAR-10, 100: CIFAR-100).
    """

    def __init__(self, num_classes: int = 10) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes

    def suggest(self, trial: Any) -> dict[str, Any]:
        ops = [trial.suggest_categorical(name, NAS201_OPS) for name in EDGE_PARAMS]
        return make_config(ops)

    def build(self, config: Mapping[str, Any]) -> NasBench201Network:
        return NasBench201Network(_config_ops(config), num_classes=self.num_classes)

    def example_inputs(self) -> torch.Tensor:
        return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def options(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}


def make_config(ops: Iterable[str]) -> dict[str, Any]:
    """The ``nas201`` config of six operations: the arch string and one entry per edge."""
    ops = tuple(ops)
    return {"arch": format_arch(ops), **dict(zip(EDGE_PARAMS, ops, strict=True))}


# the evaluator registers itself on import, and is re-exported here
from torchslim.search._nas201_eval import NasBench201TableEvaluator, nas201_cost  # noqa: E402
