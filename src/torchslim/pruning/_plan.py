"""The pruning plan: which indices every tensor keeps. Data only; JSON in, JSON out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import torchslim
from torchslim.errors import ConfigError

__all__ = ["PruningPlan", "plan_from_removals", "PLAN_FORMAT_VERSION"]

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PruningPlan:
    """For every pruned parameter or buffer (fully qualified name), the kept indices per dimension.

    Attributes:
        kept: ``{tensor: {dim: [kept indices, ascending]}}``.
        shapes: Shape of each listed tensor before pruning, to check the plan fits a model.
        options: The options that produced the plan (ratio, importance, …).
        torchslim_version: Version that wrote the plan.
    """

    kept: dict[str, dict[int, list[int]]]
    shapes: dict[str, list[int]]
    options: dict[str, Any] = field(default_factory=dict)
    torchslim_version: str = torchslim.__version__

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
        return PruningPlan(
            kept=kept, shapes=shapes, options={"steps": [self.options, later.options]}
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
        return "\n".join(lines)


def plan_from_removals(
    model: torch.nn.Module, removals: Sequence[tuple[Any, Sequence[int]]], options: dict
) -> PruningPlan:
    """Build a plan from ``(group, channels to remove)`` pairs."""
    shapes = {name: list(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    removed: dict[str, dict[int, set[int]]] = {}
    for group, channels in removals:
        if not len(channels):
            continue
        for (tensor, dim), idx in group.member_indices(channels).items():
            removed.setdefault(tensor, {}).setdefault(dim, set()).update(map(int, idx))
    kept = {
        name: {
            d: [i for i in range(shapes[name][d]) if i not in gone]
            for d, gone in sorted(dims.items())
        }
        for name, dims in removed.items()
    }
    return PruningPlan(kept=kept, shapes={n: shapes[n] for n in kept}, options=dict(options))
