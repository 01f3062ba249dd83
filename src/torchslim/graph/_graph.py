"""The dependency graph: groups of coupled tensor dimensions that must lose the same channels."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from torchslim._inputs import Inputs, as_inputs
from torchslim._patterns import matches_any
from torchslim.graph._factors import AttributeSite, attribute_sites
from torchslim.graph._labels import PINNED
from torchslim.graph._trace import trace_ids

__all__ = ["Member", "Group", "DependencyGraph", "trace"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """One tensor dimension in a group.

    Attributes:
        tensor: Fully qualified parameter or buffer name (``layer1.0.conv1.weight``).
        dim: The dimension that loses indices.
        module: Name of the module that owns the tensor.
        module_type: Its class name.
    """

    tensor: str
    dim: int
    module: str
    module_type: str


class Group:
    """Coupled tensor dimensions: channel ``c`` is ``indices[c][m]`` of member ``m``.

    A channel is the smallest removable unit: usually one index of every member, but e.g. one
    convolution channel flattened into a linear layer is ``H*W`` input features of that layer.

    The indices are stored flat: the piece of member ``m`` for channel ``c`` is
    ``index[start[c, m] : start[c, m] + length[c, m]]``.
    """

    def __init__(
        self,
        graph: DependencyGraph,
        members: tuple[Member, ...],
        index: np.ndarray,
        start: np.ndarray,
        length: np.ndarray,
        roots: np.ndarray,
    ) -> None:
        self.graph = graph
        self.members = members
        self._index = index
        self._start = start  # (channels, members)
        self._length = length
        # the channels' ids in the graph's label space (what size attributes are counted by)
        self.roots = roots
        self._indices: list[list[np.ndarray]] | None = None

    @classmethod
    def from_indices(
        cls,
        graph: DependencyGraph,
        members: tuple[Member, ...],
        indices: list[list[np.ndarray]],
        roots: np.ndarray,
    ) -> Group:
        """A group from ``indices[channel][member]`` index arrays."""
        pieces = [np.asarray(p, dtype=np.int64) for channel in indices for p in channel]
        length = np.array([len(p) for p in pieces], dtype=np.int64).reshape(len(indices), -1)
        start = (np.cumsum(length) - length.ravel()).reshape(length.shape)
        index = np.concatenate(pieces) if pieces else np.empty(0, np.int64)
        return cls(graph, members, index, start, length, np.asarray(roots))

    def __len__(self) -> int:
        return len(self._start)

    @property
    def indices(self) -> list[list[np.ndarray]]:
        """``indices[channel][member]``: the index array that member loses with that channel."""
        if self._indices is None:
            index, start, end = self._index, self._start.tolist(), (self._start + self._length)
            self._indices = [
                [index[a:b] for a, b in zip(row, ends, strict=True)]
                for row, ends in zip(start, end.tolist(), strict=True)
            ]
        return self._indices

    def member_pieces(self, k: int, channels: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Member ``k``'s indices for ``channels`` (default: all, in order), concatenated, and
        the offset where each channel's piece starts: ``np.add.reduceat(x[flat], offsets)``
        sums a per-index quantity ``x`` per channel."""
        start, length = self._start[:, k], self._length[:, k]
        if channels is not None:
            chosen = np.asarray(channels, dtype=np.int64).reshape(-1)
            start, length = start[chosen], length[chosen]
        offsets = np.cumsum(length) - length
        if len(length) and (length == 1).all():
            return self._index[start], offsets
        positions = np.repeat(start - offsets, length) + np.arange(int(length.sum()))
        return self._index[positions], offsets

    @property
    def modules(self) -> list[str]:
        """Names of the modules whose tensors are in the group, in order of first appearance."""
        return list(dict.fromkeys(m.module for m in self.members))

    def member_indices(self, channels: Iterable[int]) -> dict[tuple[str, int], np.ndarray]:
        """For the given channels, the indices each member loses."""
        chosen = np.fromiter(channels, dtype=np.int64)
        return {
            (m.tensor, m.dim): np.sort(self.member_pieces(k, chosen)[0])
            for k, m in enumerate(self.members)
        }

    def prune(self, channels: Sequence[int]) -> Any:
        """Remove these channels (positions ``0..len(self)-1``) from the model, atomically.

        Returns the :class:`~torchslim.pruning.PruningPlan` applied. The graph is stale afterwards:
        trace again before pruning more.
        """
        from torchslim.pruning._plan import plan_from_removals
        from torchslim.pruning._surgery import apply_plan

        self.graph._check_fresh()
        bad = [c for c in channels if not 0 <= c < len(self)]
        if bad:
            raise IndexError(f"channels {bad[:5]} out of range for a group of {len(self)}")
        plan = plan_from_removals(self.graph.model, [(self, channels)], options={"manual": True})
        apply_plan(self.graph.model, plan, verify_inputs=self.graph.inputs)
        self.graph.stale = True
        return plan

    def __repr__(self) -> str:
        names = ", ".join(m or "(root)" for m in self.modules[:4])
        more = ", …" if len(self.modules) > 4 else ""
        return f"Group({len(self)} channels, {len(self.members)} members: {names}{more})"

    def __str__(self) -> str:
        rows = [("tensor", "module type", "dim", "size", "per channel")]
        for k, m in enumerate(self.members):
            size = self.graph.shapes[m.tensor][m.dim]
            per = sorted(set(self._length[:, k].tolist()))
            rows.append((m.tensor, m.module_type, str(m.dim), str(size), "/".join(map(str, per))))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"Group of {len(self)} channels"]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


class DependencyGraph:
    """What :func:`trace` found: the prunable groups of a model, and the ops it could not follow."""

    def __init__(
        self,
        model: nn.Module,
        inputs: Inputs,
        groups: list[Group],
        shapes: dict[str, tuple[int, ...]],
        unsupported: dict[str, int],
        attributes: list[AttributeSite] | None = None,
    ) -> None:
        self.model = model
        self.attributes = attributes or []  # size attributes that follow pruning
        self.inputs = inputs
        self._groups = groups
        self.shapes = shapes
        self.unsupported = unsupported
        self.stale = False
        self._tensors: dict[str, Any] | None = None
        self.output_shapes: list[tuple[int, ...]] = []  # of the traced run

    @property
    def tensors(self) -> dict[str, Any]:
        """Parameters and buffers of the traced model by fully qualified name (for criteria)."""
        if self._tensors is None:
            from torchslim.pruning._surgery import named_tensors

            self._tensors = named_tensors(self.model)
        return self._tensors

    def groups(self) -> list[Group]:
        """The prunable groups, largest first in module order."""
        self._check_fresh()
        return list(self._groups)

    def _check_fresh(self) -> None:
        if self.stale:
            from torchslim.errors import ConfigError

            raise ConfigError("the model changed since it was traced; call ts.trace(...) again")

    def __str__(self) -> str:
        lines = [f"DependencyGraph of {type(self.model).__name__}: {len(self._groups)} groups"]
        for g in self._groups:
            lines.append(f"  {len(g):5d} channels  {', '.join(g.modules[:6])}")
        if self.unsupported:
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(self.unsupported.items()))
            lines.append(f"  ops without a rule (their channels are kept): {ops}")
        return "\n".join(lines)


def trace(
    model: nn.Module,
    example_inputs: Any,
    *,
    ignore: Iterable[str] = (),
    min_size: int = 2,
    attention: str = "heads",
    _alongside: Any = None,
) -> DependencyGraph:
    """Trace ``model`` on ``example_inputs`` and group its coupled prunable dimensions.

    Args:
        model: The model (not modified; runs once in its current train/eval mode).
        example_inputs: A tensor, a tuple of tensors, or a dict of keyword inputs.
        ignore: Module-name patterns (exact, glob, or ``re:`` regex) whose tensors are kept whole,
            and with them every channel coupled to them.
        min_size: Groups with fewer channels are not reported.
        attention: Where a reshape splits a width into heads: ``"heads"`` removes whole heads,
            ``"head_dim"`` removes the same dimensions from every head.
    """
    from torchslim.pruning._layers import get_layer_pruner, is_library_module
    from torchslim.pruning._surgery import tensor_owners

    if attention not in ("heads", "head_dim"):
        from torchslim.errors import ConfigError

        raise ConfigError(f"attention must be 'heads' or 'head_dim', not {attention!r}")
    inputs = as_inputs(example_inputs)
    ignore = tuple(ignore)
    result = trace_ids(model, inputs, attention, _alongside)
    space = result.space
    owners = {name: found[0] for name, found in tensor_owners(model).items()}
    tensors = {name: getattr(module, local) for name, (_, module, local) in owners.items()}
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    # dimensions that may not lose indices: by layer type, or because the user said so
    for name, dims in result.tensor_ids.items():
        mname, module, local = owners[name]
        pruner = get_layer_pruner(module)
        if pruner is not None:
            allowed = pruner.prunable_dims(module).get(local, ())
        elif is_library_module(module):
            allowed = ()
        else:
            allowed = tuple(range(len(dims)))
        if ignore and matches_any(mname, ignore):
            allowed = ()
        if local in getattr(module, "_non_persistent_buffers_set", ()):
            allowed = ()  # derived state (tables, caches) the model may rebuild at any forward
        for d, ids in enumerate(dims):
            if d not in allowed:
                space.pin(ids)
    root = space.components()
    pinned = root[PINNED]

    order = {name: i for i, name in enumerate(shapes)}
    # every unpinned index of every tensor dimension: (channel root, member, index), vectorised
    keys = sorted(
        ((name, d) for name, dims in result.tensor_ids.items() for d in range(len(dims))),
        key=lambda k: (order.get(k[0], 0), k[1]),
    )
    found_roots, found_members, found_index = [], [], []
    for m, (name, d) in enumerate(keys):
        roots = root[result.tensor_ids[name][d]]
        index = np.flatnonzero(roots != pinned)
        found_roots.append(roots[index])
        found_members.append(np.full(len(index), m, dtype=np.int64))
        found_index.append(index)
    groups: list[Group] = []
    graph = DependencyGraph(
        model,
        inputs,
        groups,
        shapes,
        dict(result.unsupported),
        attribute_sites(result.sites, root),
    )
    graph._tensors = tensors
    graph.output_shapes = [tuple(t.shape) for t in result.outputs]
    if not keys or not sum(len(i) for i in found_index):
        return graph
    r_all, m_all, i_all = (np.concatenate(a) for a in (found_roots, found_members, found_index))
    sort = np.lexsort((i_all, m_all, r_all))
    r_all, m_all, i_all = r_all[sort], m_all[sort], i_all[sort]
    # one piece per (channel, member): the indices that member loses with that channel
    starts = np.flatnonzero(np.r_[True, (r_all[1:] != r_all[:-1]) | (m_all[1:] != m_all[:-1])])
    lengths = np.diff(np.r_[starts, len(i_all)])
    piece_root, piece_member = r_all[starts], m_all[starts]
    channel_starts = np.flatnonzero(np.r_[True, piece_root[1:] != piece_root[:-1]])
    bounds = np.r_[channel_starts, len(starts)]
    # channels whose members are the same set of tensor dimensions form a group
    by_signature: dict[bytes, list[int]] = defaultdict(list)
    for c, (a, b) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
        by_signature[piece_member[a:b].tobytes()].append(c)
    for signature, channels in by_signature.items():
        if len(channels) < min_size:
            continue
        member_ids = np.frombuffer(signature, dtype=np.int64)
        members = tuple(
            Member(
                keys[m][0], keys[m][1], owners[keys[m][0]][0], type(owners[keys[m][0]][1]).__name__
            )
            for m in member_ids
        )
        chosen = np.asarray(channels, dtype=np.int64)
        # channels in the order of their first member's first index
        chosen = chosen[np.argsort(i_all[starts[bounds[chosen]]], kind="stable")]
        pieces = bounds[chosen][:, None] + np.arange(len(member_ids))[None, :]
        roots = piece_root[channel_starts[chosen]]
        groups.append(Group(graph, members, i_all, starts[pieces], lengths[pieces], roots))
    groups.sort(key=lambda g: order.get(g.members[0].tensor, 0))
    if result.unsupported:
        _logger.info("ops without a pruning rule (channels kept): %s", dict(result.unsupported))
    return graph
