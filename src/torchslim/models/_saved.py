"""Saving and loading models: safetensors for the weights, JSON for how to rebuild them.

A saved model is a directory::

    model/
      torchslim.json      format, version, the spec that rebuilds the architecture, the pruning,
                          decomposition and block-removal plans that turn it into this model,
                          metadata
      model.safetensors   the state dict (tied weights stored once)

Nothing is pickled, so loading a saved model never executes code from the file. Rebuilding runs
the model's source spec (a torchvision/timm/built-in name, or a user's ``file.py:factory``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

import torchslim
from torchslim.errors import ModelSpecError

__all__ = ["save", "load", "is_saved_model", "FORMAT", "FORMAT_VERSION"]

FORMAT = "torchslim.model"
FORMAT_VERSION = 2  # 2: "transforms" (pruning and decomposition plans, in order); 1: "plan"
_META = "torchslim.json"
_WEIGHTS = "model.safetensors"


def is_saved_model(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by :func:`save`."""
    return (Path(path) / _META).is_file()


def save(
    model: torch.nn.Module,
    path: str | Path,
    *,
    source: str | None = None,
    source_kwargs: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    plan: Any = None,
    overwrite: bool = False,
) -> Path:
    """Save ``model`` to the directory ``path`` (weights as safetensors, the rest as JSON).

    Args:
        model: The model.
        path: Target directory; written atomically (a temporary directory renamed into place).
        source: Model spec that rebuilds the architecture, e.g. ``"torchvision:resnet18"`` or
            ``"models.py:make_model"``. Optional for models built by :func:`load_model`.
        source_kwargs: Constructor arguments for ``source`` (JSON-serialisable).
        metadata: Any JSON-serialisable extra information to store.
        plan: The :class:`~torchslim.PruningPlan` that turns the rebuilt architecture into this
            (pruned) model; :func:`load` replays it before loading the weights. Defaults to what
            torchslim did to ``model`` in this process: its pruning plans (all steps composed)
            and decompositions, in order.
        overwrite: Replace an existing saved model at ``path``.

    Returns:
        The directory written.
    """
    from safetensors.torch import save_model

    from torchslim.models._history import transforms
    from torchslim.models._sources import provenance

    path = Path(path)
    steps = transforms(model)
    if plan is not None:
        if any(kind != "prune" for kind, _ in steps):
            raise ModelSpecError(
                f"{type(model).__name__} was decomposed as well as pruned in this process: omit "
                "plan= so that save records every step in order"
            )
        steps = [("prune", plan)]
    if source is None:
        known = provenance(model)
        if known is None:
            raise ModelSpecError(
                f"cannot save {type(model).__name__}: torchslim does not know how to rebuild its "
                "architecture; pass source='path/to/file.py:factory' (or torchvision:NAME, "
                "timm:NAME), or build the model with torchslim.load_model"
            )
        source, known_kwargs = known
        source_kwargs = {**known_kwargs, **(source_kwargs or {})}
    head, _, name = source.rpartition(":")
    if head.endswith(".py"):
        source = f"{Path(head).resolve()}:{name}"
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "torchslim_version": torchslim.__version__,
        "torch_version": torch.__version__,
        "model_class": type(model).__name__,
        "source": source,
        "source_kwargs": source_kwargs or {},
        "metadata": metadata or {},
        "transforms": [{"kind": kind, "plan": step.to_dict()} for kind, step in steps],
    }
    try:
        text = json.dumps(record, indent=2, sort_keys=True)
    except TypeError as exc:
        raise ModelSpecError(
            f"source_kwargs and metadata must be JSON-serialisable: {exc}"
        ) from exc
    if path.exists():
        if not is_saved_model(path):
            raise ModelSpecError(
                f"{str(path)!r} exists and is not a saved torchslim model; choose another path"
            )
        if not overwrite:
            raise ModelSpecError(f"{str(path)!r} already holds a saved model; pass overwrite=True")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_model(model, str(tmp / _WEIGHTS))
        (tmp / _META).write_text(text + "\n")
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def load(
    path: str | Path, model: torch.nn.Module | None = None, *, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Rebuild a model saved with :func:`save`, replay its pruning plan, load its weights strictly.

    Args:
        path: The saved model's directory.
        model: A freshly built, unpruned model of the saved architecture to use instead of
            rebuilding it from the recorded source spec.
        device: Where to put the weights.
    """
    from torchslim.models._sources import load_model

    path = Path(path)
    if not is_saved_model(path):
        raise ModelSpecError(f"{str(path)!r} is not a saved torchslim model (no {_META} inside)")
    record = json.loads((path / _META).read_text())
    if record.get("format") != FORMAT or record.get("format_version", 0) > FORMAT_VERSION:
        raise ModelSpecError(
            f"{path / _META} has format {record.get('format')!r} version "
            f"{record.get('format_version')!r}; this torchslim reads {FORMAT!r} up to version "
            f"{FORMAT_VERSION}: upgrade torchslim"
        )
    if model is None:
        model = load_model(record["source"], **record["source_kwargs"])
    steps = record.get("transforms")
    if steps is None:  # format 1: one pruning plan
        steps = [{"kind": "prune", "plan": record["plan"]}] if record.get("plan") else []
    for step in steps:
        if step["kind"] == "prune":
            from torchslim.pruning import PruningPlan, apply_plan

            apply_plan(model, PruningPlan.from_dict(step["plan"]))
        elif step["kind"] == "decompose":
            from torchslim.decompose import DecompositionPlan, apply_decomposition

            apply_decomposition(model, DecompositionPlan.from_dict(step["plan"]))
        elif step["kind"] == "remove_blocks":
            from torchslim.search._blocks import BlockRemovalPlan, apply_block_removal

            apply_block_removal(model, BlockRemovalPlan.from_dict(step["plan"]))
        else:
            raise ModelSpecError(
                f"{path / _META} records a step of kind {step['kind']!r}, which this torchslim "
                "does not know: upgrade torchslim"
            )
    from torchslim.models._sources import _PROVENANCE

    _PROVENANCE[model] = (record["source"], dict(record["source_kwargs"]))
    missing, unexpected = _load_weights(model, path / _WEIGHTS, device, record["source"])
    if missing or unexpected:
        raise ModelSpecError(
            f"the weights in {path / _WEIGHTS} do not fit the model rebuilt from "
            f"{record['source']!r}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device)


def _load_weights(
    model: torch.nn.Module, file: Path, device: str | torch.device, source: str
) -> tuple[list[str], list[str]]:
    """Load a safetensors state dict into ``model``; returns the missing and unexpected keys.

    The state dict carries the model's own version metadata, so that layers that check it on
    loading (torchvision's MNASNet) accept it; tied parameters, saved once, count as loaded.
    """
    from collections import OrderedDict

    from safetensors.torch import load_file

    state = OrderedDict(load_file(str(file), device=str(device)))
    own = model.state_dict(keep_vars=True)
    state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelSpecError(
            f"the weights in {file} do not fit the model rebuilt from {source!r}: {exc}"
        ) from exc
    loaded = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in missing if own[k].data_ptr() not in loaded]
    return missing, list(unexpected)
