"""Surgery: apply a plan to a model, atomically.

Every parameter keeps its identity (only ``.data`` is replaced), so optimizers and references held
by the caller stay valid. If anything fails (a layer that cannot take the new shapes, a forward pass
that no longer runs), every tensor and attribute is restored exactly and the error names the
module at fault.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from torchslim._inputs import Inputs, eval_mode
from torchslim.errors import PruningError, TorchSlimError
from torchslim.pruning._layers import get_layer_pruner, is_library_module
from torchslim.pruning._plan import PruningPlan

__all__ = ["apply_plan", "transaction", "applied_plan"]


def applied_plan(model: nn.Module) -> PruningPlan | None:
    """The plan (all steps composed) that pruned ``model`` in this process, if pruning is all
    torchslim did to it (see :func:`torchslim.models._history.transforms` for the rest)."""
    from torchslim.models._history import transforms

    done = transforms(model)
    if len(done) == 1 and done[0][0] == "prune":
        return done[0][1]
    return None


_logger = logging.getLogger(__name__)


@contextlib.contextmanager
def transaction(model: nn.Module) -> Iterator[None]:
    """Restore every module's tensors and attributes exactly if the block raises."""
    saved = []
    for module in model.modules():
        attrs = {
            k: v
            for k, v in module.__dict__.items()
            if k not in ("_parameters", "_buffers", "_modules")
        }
        params = dict(module._parameters)
        data = {k: (p.data, p.grad) for k, p in params.items() if p is not None}
        saved.append((module, attrs, params, data, dict(module._buffers), dict(module._modules)))
    try:
        yield
    except BaseException:
        for module, attrs, params, data, buffers, modules in saved:
            for k in list(module.__dict__):
                if k not in ("_parameters", "_buffers", "_modules") and k not in attrs:
                    del module.__dict__[k]
            module.__dict__.update(attrs)
            module._parameters.clear()
            module._parameters.update(params)
            for k, (d, g) in data.items():
                params[k].data = d
                params[k].grad = g
            module._buffers.clear()
            module._buffers.update(buffers)
            module._modules.clear()
            module._modules.update(modules)
        raise


def tensor_owners(model: nn.Module) -> dict[str, list[tuple[str, nn.Module, str]]]:
    """Fully qualified tensor name -> every ``(module name, module, local name)`` that holds it
    (shared modules and tied parameters have several)."""
    out: dict[str, list[tuple[str, nn.Module, str]]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for local in [*module._parameters, *module._buffers]:
            if getattr(module, local, None) is None:
                continue
            full = f"{mname}.{local}" if mname else local
            out.setdefault(full, []).append((mname, module, local))
    return out


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by fully qualified name, non-persistent buffers included (they
    are not in the state dict, but may have channel dimensions that pruning must slice)."""
    return {
        name: getattr(owners[0][1], owners[0][2]) for name, owners in tensor_owners(model).items()
    }


def _slice(t: torch.Tensor, dims: dict[int, list[int]]) -> torch.Tensor:
    for d, keep in sorted(dims.items()):
        t = t.index_select(d, torch.as_tensor(keep, dtype=torch.long, device=t.device))
    return t.contiguous()


def _outputs_signature(out: Any) -> list[tuple[int, ...]]:
    from torchslim.graph._trace import _output_tensors

    return [tuple(t.shape) for t in _output_tensors(out)]


_DYNAMIC_OPS = ("nonzero", "masked_select", "unique", "argwhere", "nms")


def _has_data_dependent_shapes(model: nn.Module, inputs: Inputs) -> bool:
    """Whether the model runs an op whose output size depends on values (``nonzero``, NMS, …):
    detectors return as many boxes as pass their thresholds."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Probe(TorchDispatchMode):
        found = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            if any(op in name for op in _DYNAMIC_OPS):
                Probe.found = True
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), eval_mode(model), Probe():
        inputs.call(model)
    return Probe.found


def _same_shapes(
    reference: list[tuple[int, ...]], after: list[tuple[int, ...]], model: nn.Module, inputs: Inputs
) -> bool:
    """Output shapes kept; for models with data-dependent output sizes, all but the leading
    (count) dimension of each output."""
    if after == reference:
        return True
    if len(after) != len(reference) or any(
        len(a) != len(b) or a[1:] != b[1:] for a, b in zip(after, reference, strict=True)
    ):
        return False
    return _has_data_dependent_shapes(model, inputs)


def apply_plan(
    model: nn.Module,
    plan: PruningPlan,
    *,
    verify_inputs: Inputs | None = None,
    reference: list[tuple[int, ...]] | None = None,
    _alongside: Any = None,
) -> nn.Module:
    """Prune ``model`` in place as ``plan`` says; all or nothing.

    Args:
        model: A model of the architecture the plan was made for, unpruned.
        plan: The plan.
        verify_inputs: When given, the model is run on them before and after, and its outputs must
            keep their shapes.
        reference: The output shapes before pruning, when already known (saves a forward pass).

    Raises:
        PruningError: the plan does not fit the model, a layer cannot take its new shapes, or the
            pruned model fails; the model is left exactly as it was.
    """
    owners = tensor_owners(model)
    for name, shape in plan.shapes.items():
        if name not in owners:
            raise PruningError(f"the plan prunes {name!r}, which this model does not have")
        t = getattr(owners[name][0][1], owners[name][0][2])
        if list(t.shape) != list(shape):
            raise PruningError(
                f"the plan expects {name!r} of shape {list(shape)}, the model has "
                f"{list(t.shape)}: apply plans to a fresh, unpruned model of the same architecture"
            )
    modules = dict(model.named_modules())
    for mname, attrs in plan.attributes.items():
        for attr, (old, _new) in attrs.items():
            current = getattr(modules.get(mname), attr, None)
            if (list(current) if isinstance(current, tuple) else current) != old:
                raise PruningError(
                    f"the plan changes {mname or '(root)'}.{attr} from {old}, the model has "
                    f"{current}: apply plans to a fresh, unpruned model of the same architecture"
                )
    if verify_inputs is not None and reference is None:
        with torch.no_grad(), eval_mode(model):
            reference = _outputs_signature(verify_inputs.call(model))

    with transaction(model):
        touched: dict[int, tuple[str, nn.Module, dict[str, tuple[int, ...]]]] = {}
        for name, dims in plan.kept.items():
            first_module, first_local = owners[name][0][1], owners[name][0][2]
            t = getattr(first_module, first_local)
            new = _slice(t.detach(), dims)
            if isinstance(t, nn.Parameter):
                t.data = new  # shared (tied) parameters are sliced once, for every owner
                t.grad = None
            for mname, module, local in owners[name]:
                if not isinstance(t, nn.Parameter):
                    module._buffers[local] = new
                entry = touched.setdefault(id(module), (mname, module, {}))
                entry[2][local] = tuple(plan.shapes[name])
        for mname, attrs in plan.attributes.items():
            for attr, (_old, new) in attrs.items():
                current = getattr(modules[mname], attr)
                setattr(modules[mname], attr, tuple(new) if isinstance(current, tuple) else new)
        for mname, module, old_shapes in touched.values():
            pruner = get_layer_pruner(module)
            try:
                if pruner is not None:
                    pruner.update(module, old_shapes)
                elif is_library_module(module):
                    raise PruningError(
                        f"no pruner registered for {type(module).__name__}; register one with "
                        f"@ts.register_layer_pruner({type(module).__name__})"
                    )
            except TorchSlimError as exc:
                raise PruningError(
                    f"cannot prune {type(module).__name__} at {mname!r}: {exc}; pass "
                    f"ignore=[{mname!r}] to keep it"
                ) from exc
        if verify_inputs is not None:
            try:
                with (
                    torch.no_grad(),
                    eval_mode(model),
                    _alongside if _alongside is not None else contextlib.nullcontext(),
                ):
                    after = _outputs_signature(verify_inputs.call(model))
            except Exception as exc:
                custom = sorted(
                    f"{m or '(root)'} ({type(mod).__name__})"
                    for m, mod, _ in touched.values()
                    if get_layer_pruner(mod) is None
                )
                hint = (
                    f"; these modules had tensors pruned without a registered pruner: "
                    f"{', '.join(custom)}: register a pruner for them with "
                    "@ts.register_layer_pruner, or pass their names in ignore="
                    if custom
                    else ""
                )
                raise PruningError(
                    f"the pruned model fails on the example inputs ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}){hint}; the model was restored"
                ) from exc
            if not _same_shapes(reference, after, model, verify_inputs):
                raise PruningError(
                    f"pruning changed the output shapes from {reference} to {after}; the model was "
                    "restored"
                )
    from torchslim.models._history import record_transform

    record_transform(model, "prune", plan)
    return model
