"""Tracing: run the model once under a dispatch mode and record how ops couple channel ids.

We trace at the ATen dispatcher while the model runs eagerly on the example inputs. Any model that
runs can be traced: there is no symbolic tracing to break on Python control flow, data-dependent
shapes or custom code, and every op, whichever module or function issued it, is seen. Each op's rule
(:mod:`torchslim.graph._rules`) ties the ids of the dimensions it couples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

from torchslim._attention import attention_op_by_op
from torchslim._inputs import Inputs, eval_mode
from torchslim.errors import TracingError
from torchslim.graph._factors import SizeSite, module_rule, resolve
from torchslim.graph._labels import LabelSpace
from torchslim.graph._rules import RULES, Dims, _tensors, pointwise, unknown

__all__ = ["TraceResult", "trace_ids"]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TraceResult:
    """What tracing found: per tensor (parameter or buffer) name, the ids of each dimension."""

    space: LabelSpace
    tensor_ids: dict[str, Dims]
    unsupported: Counter
    outputs: list[torch.Tensor]
    sites: list[SizeSite] = dataclasses.field(default_factory=list)


class _Tracer(TorchDispatchMode):
    def __init__(self, space: LabelSpace, names: dict[int, str], modules: dict[int, str]) -> None:
        super().__init__()
        self.space = space
        self.names = names
        self.module_names = modules
        self.labels = WeakTensorKeyDictionary()
        self.tensor_ids: dict[str, Dims] = {}
        self.unsupported: Counter = Counter()
        self.records: list[Any] = []
        self.sites: list[SizeSite] = []
        self._stack: list[torch.nn.Module] = []
        self._widths: dict[int, np.ndarray | None] = {}

    @property
    def module(self) -> torch.nn.Module | None:
        """The innermost module of the traced model that is running now."""
        return self._stack[-1] if self._stack else None

    def record(self, rec: Any) -> None:
        self.records.append(rec)

    def site(
        self, ids: np.ndarray, auto: bool = False, inner: bool | None = None, shape: Any = None
    ) -> None:
        """A labelled dimension of a reshape's target shape: its size may come from an attribute
        of the module issuing the reshape (``num_heads``, ``hidden_dim``), which pruning updates."""
        module = self.module
        if module is not None and ids is not None and not auto:
            self.sites.append(SizeSite(self.module_names[id(module)], module, ids, inner, shape))

    def input_width(self) -> np.ndarray | None:
        """Ids of the last dimension of the running module's first tensor input."""
        module = self.module
        return None if module is None else self._widths.get(id(module))

    def _enter(self, module, args) -> None:
        if id(module) in self.module_names:
            self._stack.append(module)
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if first is not None and first.dim():
                self._widths[id(module)] = self.dims(first)[-1]
            rule = module_rule(module)
            if rule is not None:
                try:
                    rule(self, module, args)
                except Exception as exc:  # pragma: no cover - defensive, like op rules
                    _logger.debug("module rule for %s failed: %s", type(module).__name__, exc)

    def _exit(self, module, args, out) -> None:
        if self._stack and self._stack[-1] is module:
            self._stack.pop()

    # Context protocol used by the rules
    def dims(self, t: torch.Tensor) -> Dims:
        found = self.labels.get(t)
        if found is not None:
            return found
        name = self.names.get(id(t))
        if name is not None and (t.is_floating_point() or t.is_complex()):
            dims = tuple(self.space.fresh(int(s)) for s in t.shape)
            self.tensor_ids[name] = dims
            self.labels[t] = dims
            return dims
        return (None,) * t.dim()

    def tie(self, a, b) -> None:
        self.space.tie(a, b)

    def pin(self, ids) -> None:
        self.space.pin(ids)

    def use(self, ids) -> None:
        self.space.use(ids)

    def fresh(self, n: int) -> np.ndarray:
        return self.space.fresh(n)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = RULES.get(func) or RULES.get(func.overloadpacket)
        if rule is None:
            rule = pointwise if torch.Tag.pointwise in func.tags else None
        if rule is None:
            if _tensors((args, kwargs)):
                self.unsupported[str(func.overloadpacket)] += 1
            rule = unknown
        try:
            dims = rule(self, func, args, kwargs, out)
        except Exception as exc:  # a rule that cannot handle this call must not break the model
            _logger.debug("rule for %s failed (%s); pinning its inputs", func, exc)
            self.unsupported[f"{func.overloadpacket} (rule failed: {type(exc).__name__})"] += 1
            dims = unknown(self, func, args, kwargs, out)
        self._assign(out, dims)
        return out

    def _assign(self, out: Any, dims: Any) -> None:
        if isinstance(out, torch.Tensor):
            if dims is None or len(dims) != out.dim():
                dims = (None,) * out.dim()
            self.labels[out] = tuple(
                None if v is None or len(v) != out.shape[i] else v for i, v in enumerate(dims)
            )
        elif isinstance(out, (tuple, list)) and isinstance(dims, (tuple, list)):
            if len(dims) == len(out) and all(d is None or isinstance(d, tuple) for d in dims):
                for o, d in zip(out, dims, strict=True):
                    if isinstance(o, torch.Tensor):
                        self._assign(o, d)
                return
            for o in out:
                if isinstance(o, torch.Tensor):
                    self._assign(o, None)


def _output_tensors(out: Any) -> list[torch.Tensor]:
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        out = [getattr(out, f.name) for f in dataclasses.fields(out)]
    if hasattr(out, "to_tuple") and callable(out.to_tuple):  # Hugging Face ModelOutput
        out = out.to_tuple()
    leaves, _ = tree_flatten(out)
    found = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            found.append(leaf)
        elif dataclasses.is_dataclass(leaf) and not isinstance(leaf, type):
            found.extend(_output_tensors(leaf))
    return found


def trace_ids(
    model: torch.nn.Module,
    inputs: Inputs,
    attention: str = "heads",
    alongside: Any = None,
) -> TraceResult:
    """Run ``model`` on ``inputs`` and collect the ties between channel ids of its tensors."""
    names: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=True):
        names[id(p)] = name
    for name, b in model.named_buffers(remove_duplicate=True):
        names.setdefault(id(b), name)
    modules = {id(m): name for name, m in model.named_modules()}
    space = LabelSpace()
    tracer = _Tracer(space, names, modules)
    pre = torch.nn.modules.module.register_module_forward_pre_hook(tracer._enter)
    post = torch.nn.modules.module.register_module_forward_hook(tracer._exit, always_call=True)
    try:
        with (
            torch.no_grad(),
            eval_mode(model),
            attention_op_by_op(),
            alongside if alongside is not None else contextlib.nullcontext(),
            tracer,
        ):
            out = inputs.call(model)
    except Exception as exc:
        raise TracingError(
            f"{type(model).__name__} failed while running on the example inputs for tracing: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        pre.remove()
        post.remove()
    outputs = _output_tensors(out)
    for t in outputs:  # what the model returns keeps its shape: its channels are pinned
        for v in tracer.dims(t):
            space.pin(v)
    # a parameter dimension no rule understood (kernel taps, vocabulary rows) is kept whole
    used = space.used()
    for dims in tracer.tensor_ids.values():
        for v in dims:
            if v is not None and not used[v].all():
                space.pin(v[~used[v]])
    resolve(space, tracer.records, attention)
    return TraceResult(space, tracer.tensor_ids, tracer.unsupported, outputs, tracer.sites)
