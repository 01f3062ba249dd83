"""Example inputs, used the same way by every verb.

``example_inputs`` may be a tensor, a tuple (or list) of positional inputs, or a dict of keyword
inputs (Hugging Face style). Inputs may nest containers; every tensor inside is moved together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from torchslim.errors import ConfigError

__all__ = ["Inputs", "as_inputs", "eval_mode"]


@dataclass(frozen=True)
class Inputs:
    """Normalised example inputs: positional ``args`` and keyword ``kwargs``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor inside the inputs, in a stable order."""
        leaves, _ = tree_flatten((self.args, self.kwargs))
        return [x for x in leaves if isinstance(x, torch.Tensor)]

    def to(self, device: torch.device | str) -> Inputs:
        """A copy with every tensor on ``device`` (tensors already there are not copied)."""

        def move(x: Any) -> Any:
            return x.to(device) if isinstance(x, torch.Tensor) else x

        return Inputs(tree_map(move, self.args), tree_map(move, self.kwargs))

    def call(self, model: torch.nn.Module) -> Any:
        """Run ``model`` on these inputs."""
        return model(*self.args, **self.kwargs)

    @property
    def batch_size(self) -> int | None:
        """Size of the leading dimension of the first tensor, or ``None`` for 0-d inputs."""
        for t in self.tensors():
            return int(t.shape[0]) if t.dim() > 0 else None
        return None

    @property
    def device(self) -> torch.device | None:
        """Device of the first tensor, or ``None`` when there are no tensors."""
        for t in self.tensors():
            return t.device
        return None

    def shapes(self) -> dict[str, list[int]]:
        """Input shapes keyed by position (``"0"``, ``"1"``…) or keyword name, for reports."""
        out: dict[str, list[int]] = {}
        for i, a in enumerate(self.args):
            if isinstance(a, torch.Tensor):
                out[str(i)] = list(a.shape)
        for k, v in self.kwargs.items():
            if isinstance(v, torch.Tensor):
                out[k] = list(v.shape)
        return out


def as_inputs(example_inputs: Any) -> Inputs:
    """Normalise ``example_inputs`` (tensor, tuple/list, or dict of keyword inputs).

    Raises:
        ConfigError: when the inputs hold no tensor or are of an unsupported type.
    """
    if isinstance(example_inputs, Inputs):
        return example_inputs
    if isinstance(example_inputs, torch.Tensor):
        inputs = Inputs((example_inputs,), {})
    elif isinstance(example_inputs, (tuple, list)):
        inputs = Inputs(tuple(example_inputs), {})
    elif isinstance(example_inputs, Mapping):
        bad = [k for k in example_inputs if not isinstance(k, str)]
        if bad:
            raise ConfigError(
                f"keyword example inputs must be keyed by argument name (str); got keys {bad!r}"
            )
        inputs = Inputs((), dict(example_inputs))
    else:
        raise ConfigError(
            f"example_inputs must be a tensor, a tuple of tensors or a dict of keyword inputs; "
            f"got {type(example_inputs).__name__}"
        )
    if not inputs.tensors():
        raise ConfigError(
            "example_inputs hold no tensor; pass e.g. torch.randn(1, 3, 224, 224) or "
            "{'input_ids': ids, 'attention_mask': mask}"
        )
    return inputs


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with ``model`` in eval mode (no running-statistics updates, no dropout), then
    restore every module's own train/eval flag."""
    flags = [(m, m.training) for m in model.modules()]
    if any(flag for _, flag in flags):
        model.eval()  # through train(False): subclasses may override it
    try:
        yield
    finally:
        for m, flag in flags:
            if m.training != flag:
                m.training = flag
