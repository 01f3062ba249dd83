"""The pruning plan: which indices every tensor keeps. Data only; JSON in, JSON out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import torchslim
from torchslim.errors import ConfigError

__all__ = ["PruningPlan", "plan_from_removals", "PLAN_FORMAT_VERSION"]

PLAN_FORMAT_VERSION = 2  # 2 added "attributes"


@dataclass(frozen=True)
class PruningPlan:
    """For every pruned parameter or buffer (fully qualified name), the kept indices per dimension.

    Attributes:
        kept: ``{tensor: {dim: [kept indices, ascending]}}``.
        shapes: Shape of each listed tensor before pruning, to check the plan fits a model.
        options: The options that produced the plan (ratio, importance, …).
        torchslim_version: Version that wrote the plan.
        attributes: Integer size attributes that change, ``{module: {name: [old, new]}}``
            (``num_heads`` when heads are removed, ``hidden_dim``, …).
    """

    kept: dict[str, dict[int, list[int]]]
    shapes: dict[str, list[int]]
    options: dict[str, Any] = field(default_factory=dict)
    torchslim_version: str = torchslim.__version__
    attributes: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, dims in self.kept.items():
            if name not in self.shapes:
                raise ConfigError(f"plan lists {name!r} without its original shape")
            for d, keep in dims.items():
                size = self.shapes[name][d]
                if not keep:
                    raise ConfigError(f"plan removes every index of {name!r} dim {d}")
                if keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= size:
                    raise ConfigError(
                        f"plan's kept indices for {name!r} dim {d} must be ascending, unique "
                        f"and in [0, {size})"
                    )

    @property
    def tensors(self) -> list[str]:
        return sorted(self.kept)

    def removed(self, name: str, dim: int) -> list[int]:
        """Indices of dimension ``dim`` of tensor ``name`` that the plan removes."""
        if name not in self.kept or dim not in self.kept[name]:
            return []
        keep = set(self.kept[name][dim])
        return [i for i in range(self.shapes[name][dim]) if i not in keep]

    def then(self, later: PruningPlan) -> PruningPlan:
        """The plan that does ``self`` and then ``later`` (made on the model ``self`` produced)."""
        kept = {name: dict(dims) for name, dims in self.kept.items()}
        shapes = {name: list(shape) for name, shape in self.shapes.items()}
        for name, dims in later.kept.items():
            base = kept.setdefault(name, {})
            shapes.setdefault(name, list(later.shapes[name]))
            for d, keep in dims.items():
                before = base.get(d, list(range(later.shapes[name][d])))
                if len(before) != later.shapes[name][d]:
                    raise ConfigError(
                        f"plans do not chain: {name!r} dim {d} has {len(before)} indices after the "
                        f"first plan, the second expects {later.shapes[name][d]}"
                    )
                base[d] = [before[i] for i in keep]
        attributes = {m: {a: list(v) for a, v in d.items()} for m, d in self.attributes.items()}
        for module, attrs in later.attributes.items():
            for attr, (old, new) in attrs.items():
                first = attributes.setdefault(module, {}).get(attr)
                if first is not None and first[1] != old:
                    raise ConfigError(
                        f"plans do not chain: {module}.{attr} is {first[1]} after the first plan, "
                        f"the second expects {old}"
                    )
                attributes[module][attr] = [first[0] if first else old, new]
        return PruningPlan(
            kept=kept,
            shapes=shapes,
            options={"steps": [self.options, later.options]},
            attributes=attributes,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "torchslim.plan",
            "format_version": PLAN_FORMAT_VERSION,
            "torchslim_version": self.torchslim_version,
            "options": self.options,
            "shapes": {k: list(v) for k, v in sorted(self.shapes.items())},
            "kept": {
                k: {str(d): list(map(int, keep)) for d, keep in sorted(v.items())}
                for k, v in sorted(self.kept.items())
            },
            "attributes": {
                m: {a: [_plain(x) for x in v] for a, v in sorted(d.items())}
                for m, d in sorted(self.attributes.items())
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        if data.get("format") != "torchslim.plan":
            raise ConfigError("not a torchslim pruning plan (missing format: torchslim.plan)")
        if data.get("format_version", 0) > PLAN_FORMAT_VERSION:
            raise ConfigError(
                f"plan format version {data['format_version']} is newer than this torchslim "
                f"reads ({PLAN_FORMAT_VERSION}); upgrade torchslim"
            )
        return cls(
            kept={
                k: {int(d): list(v) for d, v in dims.items()} for k, dims in data["kept"].items()
            },
            shapes={k: list(v) for k, v in data["shapes"].items()},
            options=dict(data.get("options", {})),
            torchslim_version=data.get("torchslim_version", "unknown"),
            attributes={
                m: {a: [_plain(x) for x in v] for a, v in d.items()}
                for m, d in data.get("attributes", {}).items()
            },
        )

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> PruningPlan:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        lines = [f"PruningPlan: {len(self.kept)} tensors"]
        for name in self.tensors:
            dims = ", ".join(
                f"dim {d}: {self.shapes[name][d]} -> {len(k)}"
                for d, k in sorted(self.kept[name].items())
            )
            lines.append(f"  {name}: {dims}")
        for module, attrs in sorted(self.attributes.items()):
            for attr, (old, new) in sorted(attrs.items()):
                lines.append(f"  {module or '(root)'}.{attr}: {old} -> {new}")
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    """An attribute value as JSON has it: an int, or a list of ints (shape tuples)."""
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return int(value)


def plan_from_removals(
    model: torch.nn.Module, removals: Sequence[tuple[Any, Sequence[int]]], options: dict
) -> PruningPlan:
    """Build a plan from ``(group, channels to remove)`` pairs."""
    from torchslim.graph._factors import attribute_updates
    from torchslim.pruning._surgery import named_tensors

    shapes = {name: list(t.shape) for name, t in named_tensors(model).items()}
    removed: dict[str, dict[int, list[np.ndarray]]] = {}
    removed_roots: set[int] = set()
    sites = []
    for group, channels in removals:
        sites = group.graph.attributes
        if not len(channels):
            continue
        removed_roots.update(group.roots[np.asarray(channels, dtype=np.int64)].tolist())
        for (tensor, dim), idx in group.member_indices(channels).items():
            removed.setdefault(tensor, {}).setdefault(dim, []).append(idx)
    kept = {}
    for name, dims in removed.items():
        kept[name] = {}
        for d, gone in sorted(dims.items()):
            keep = np.ones(shapes[name][d], dtype=bool)
            keep[np.concatenate(gone)] = False
            kept[name][d] = np.flatnonzero(keep).tolist()
    return PruningPlan(
        kept=kept,
        shapes={n: shapes[n] for n in kept},
        options=dict(options),
        attributes=attribute_updates(sites, removed_roots),
    )
