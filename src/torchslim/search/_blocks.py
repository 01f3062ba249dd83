"""Removable residual blocks: depth pruning by replacing ``x + f(x)`` blocks with ``nn.Identity``.

A block is removable when the model stays the same shape without it and what is lost is only
its residual branch: the module computes ``x + f(x)`` (possibly followed by an activation that is
the identity on its inputs, such as the ReLU after ResNet's add when the block's input is itself
a ReLU output). :func:`find_residual_blocks` finds them generically, by behaviour:

1. the model runs once on the example inputs; every submodule that owns parameters, runs
   exactly once, takes one tensor and returns a tensor of the same shape is a candidate, and its
   real input is recorded;
2. a copy of each candidate with every floating-point parameter and buffer set to zero runs on
   that input; the candidate is a residual block when it returns its input (and the input is not
   all zero).

Why by behaviour rather than by reading the traced graph: removal is valid exactly when the block
equals the identity once its residual branch is gone, and zeroing the weights removes any branch
that ends in a weighted layer (convolution, linear, affine normalisation) whatever the code looks
like: torchvision's ``InvertedResidual`` with ``use_res_connect``, ``BasicBlock`` with its final
ReLU, DemoResNet's blocks, pre-norm transformer blocks. A module without a skip path returns
something else (zeros, or a function of zero weights), and a block with a projection shortcut
changes the shape. The check runs on the recorded input of the real example, so an activation
after the add passes only where it is the identity on the data the block actually sees. When
blocks nest (a stage made of residual blocks is itself one), the innermost are reported.

:func:`remove_blocks_` replaces blocks with ``nn.Identity`` and records a
:class:`BlockRemovalPlan` in the model's history, so ``ts.save`` stores it and ``ts.load``
replays it (:func:`apply_block_removal`) on a freshly built model before its pruning plans.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import torchslim
from torchslim._inputs import as_inputs, eval_mode
from torchslim._patterns import matches_any
from torchslim.errors import ConfigError, ModelSpecError

__all__ = [
    "BlockRemovalPlan",
    "find_residual_blocks",
    "remove_blocks_",
    "apply_block_removal",
]

_logger = logging.getLogger(__name__)

BLOCKS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class BlockRemovalPlan:
    """Which modules became ``nn.Identity``, and their class names (checked when replayed).

    Attributes:
        modules: Fully qualified module names, in the order given.
        types: Their class names before removal.
        options: Free-form information on how the blocks were chosen.
    """

    modules: tuple[str, ...]
    types: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    torchslim_version: str = torchslim.__version__

    def __post_init__(self) -> None:
        if len(self.modules) != len(self.types):
            raise ConfigError(
                f"a block removal plan needs one type per module: got {len(self.modules)} "
                f"modules and {len(self.types)} types"
            )
        if len(set(self.modules)) != len(self.modules):
            raise ConfigError(f"a block removal plan lists a module twice: {list(self.modules)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "torchslim.blocks",
            "format_version": BLOCKS_FORMAT_VERSION,
            "torchslim_version": self.torchslim_version,
            "options": self.options,
            "modules": [
                {"name": n, "type": t} for n, t in zip(self.modules, self.types, strict=True)
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockRemovalPlan:
        if data.get("format") != "torchslim.blocks":
            raise ConfigError(
                "not a torchslim block removal plan (missing format: torchslim.blocks)"
            )
        if data.get("format_version", 0) > BLOCKS_FORMAT_VERSION:
            raise ConfigError(
                f"block removal plan format version {data['format_version']} is newer than this "
                f"torchslim reads ({BLOCKS_FORMAT_VERSION}); upgrade torchslim"
            )
        return cls(
            modules=tuple(m["name"] for m in data["modules"]),
            types=tuple(m["type"] for m in data["modules"]),
            options=dict(data.get("options", {})),
            torchslim_version=data.get("torchslim_version", "unknown"),
        )

    def __str__(self) -> str:
        lines = [f"BlockRemovalPlan: {len(self.modules)} blocks -> Identity"]
        lines += [f"  {n} ({t})" for n, t in zip(self.modules, self.types, strict=True)]
        return "\n".join(lines)


def _owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


@torch.no_grad()
def find_residual_blocks(
    model: nn.Module, example_inputs: Any, *, ignore: Iterable[str] = ()
) -> list[str]:
    """Names of the modules of ``model`` that compute ``x + f(x)`` with equal shapes, and so can
    be replaced by ``nn.Identity`` (see the module docstring for how they are found).

    Args:
        model: The model (not modified; runs once in eval mode).
        example_inputs: A tensor, a tuple of tensors, or a dict of keyword inputs.
        ignore: Module-name patterns (exact, glob, ``re:``) to keep: neither they nor the
            modules that hold them are reported.

    Returns:
        The innermost residual blocks, in the order they run.
    """
    inputs = as_inputs(example_inputs)
    ignore = tuple(ignore)
    seen: dict[str, dict[str, Any]] = {}  # name -> calls, input, output shape
    order: list[str] = []
    handles = []

    def pre_hook(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            record = seen.setdefault(name, {"calls": 0})
            record["calls"] += 1
            if name not in order:
                order.append(name)
            single = len(args) == 1 and isinstance(args[0], torch.Tensor)
            tensors_in_kwargs = any(isinstance(v, torch.Tensor) for v in kwargs.values())
            if record["calls"] == 1 and single and not tensors_in_kwargs:
                record["input"] = args[0].detach().clone()  # later in-place ops must not touch it
                record["kwargs"] = dict(kwargs)

        return hook

    def post_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if seen[name]["calls"] == 1 and isinstance(output, torch.Tensor):
                seen[name]["shape"] = tuple(output.shape)

        return hook

    modules = dict(model.named_modules())
    ignored = [n for n in modules if n and matches_any(n, ignore)]
    for name, module in modules.items():
        # an ignored module is kept, so neither it nor a module holding it can be dropped
        kept = any(i == name or i.startswith(name + ".") for i in ignored)
        if name and _owns_parameters(module) and not kept:
            handles.append(module.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook(name)))
    try:
        with eval_mode(model):
            inputs.call(model)
    finally:
        for handle in handles:
            handle.remove()

    found = []
    for name in order:
        record = seen[name]
        x = record.get("input")
        if record["calls"] != 1 or x is None or record.get("shape") != tuple(x.shape):
            continue
        if not x.is_floating_point() or not bool(x.abs().max() > 0):
            continue
        zeroed = copy.deepcopy(modules[name]).eval()
        for tensor in (*zeroed.parameters(), *zeroed.buffers()):
            if tensor.is_floating_point():
                tensor.zero_()
        try:
            out = zeroed(x.clone(), **record["kwargs"])
        except Exception as exc:  # noqa: BLE001 - a module that cannot run alone is no block
            _logger.debug("%s does not run on its own (%s): not a removable block", name, exc)
            continue
        scale = float(x.abs().max())
        if isinstance(out, torch.Tensor) and torch.allclose(out, x, rtol=0, atol=1e-6 * scale):
            found.append(name)
    # innermost only: a stage of residual blocks is itself one
    blocks = [n for n in found if not any(o.startswith(n + ".") for o in found)]
    _logger.info("found %d removable residual blocks: %s", len(blocks), ", ".join(blocks))
    return blocks


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _modules_to_remove(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    if isinstance(names, str):
        raise ConfigError(f"pass a list of module names, not the string {names!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"a block is listed twice in {list(names)}")
    modules = dict(model.named_modules())
    chosen = []
    for name in names:
        if not name or name not in modules:
            raise ConfigError(
                f"{type(model).__name__} has no module {name!r} to remove; "
                "ts.search.find_residual_blocks(model, example_inputs) lists the removable ones"
            )
        chosen.append((name, modules[name]))
    for name, _ in chosen:
        inner = [o for o, _ in chosen if o.startswith(name + ".")]
        if inner:
            raise ConfigError(f"block {name!r} contains {inner[0]!r}, also listed: list one")
    return chosen


def remove_blocks_(
    model: nn.Module, blocks: Sequence[str], *, options: dict[str, Any] | None = None
) -> BlockRemovalPlan:
    """Replace each named module of ``model`` with ``nn.Identity``, in place, and record it.

    The modules should be residual blocks (:func:`find_residual_blocks`): this function does not
    check that removing them keeps the model's shapes or function. The removal is recorded in the
    model's history, so ``ts.save`` stores it and ``ts.load`` replays it.

    Returns:
        The :class:`BlockRemovalPlan` applied (empty when ``blocks`` is).
    """
    chosen = _modules_to_remove(model, blocks)
    plan = BlockRemovalPlan(
        modules=tuple(n for n, _ in chosen),
        types=tuple(type(m).__name__ for _, m in chosen),
        options=dict(options or {}),
    )
    _apply(model, plan)
    return plan


def apply_block_removal(model: nn.Module, plan: BlockRemovalPlan | dict) -> nn.Module:
    """Replay ``plan`` on a freshly built model of the architecture it was made on; all or
    nothing (every module is checked before any is replaced). Returns the model."""
    if isinstance(plan, dict):
        plan = BlockRemovalPlan.from_dict(plan)
    modules = dict(model.named_modules())
    for name, kind in zip(plan.modules, plan.types, strict=True):
        module = modules.get(name)
        if module is None or type(module).__name__ != kind:
            found = "nothing" if module is None else type(module).__name__
            raise ModelSpecError(
                f"the block removal plan replaces {name!r} ({kind}), but this "
                f"{type(model).__name__} has {found} there: apply it to a model of the "
                "architecture it was made on"
            )
    _apply(model, plan)
    return model


def _apply(model: nn.Module, plan: BlockRemovalPlan) -> None:
    from torchslim.models._history import record_transform

    for name in plan.modules:
        _replace(model, name, nn.Identity())
    if plan.modules:
        record_transform(model, "remove_blocks", plan)
        _logger.info("replaced %d blocks with Identity", len(plan.modules))
