"""Training checkpoints: safetensors for tensors, JSON for everything else, never a pickle.

A checkpoint directory holds::

    checkpoint.json                         counters, config, history, optimizer and scheduler
                                            settings, random-number states; names the files below
    step-00000120.model.safetensors         the model's state dict
    step-00000120.optimizer.safetensors     the optimizer's tensors (momenta, Adam moments, steps)

Each file is written to a temporary name and renamed into place (``os.replace``), the tensor
files first and ``checkpoint.json`` last, so an interruption at any moment leaves the previous
checkpoint or the new one, never a broken mix; files that no checkpoint names any more are
removed afterwards. Loading reads tensors with safetensors only (no ``torch.load``), so reading a
checkpoint never runs code from it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import torchslim
from torchslim.errors import CheckpointError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "capture_rng",
    "restore_rng",
    "write",
    "exists",
    "read",
    "load_model_state",
    "load_optimizer_state",
]

_logger = logging.getLogger(__name__)

FORMAT = "torchslim.finetune_checkpoint"
FORMAT_VERSION = 1
_POINTER = "checkpoint.json"


# -- random-number states, as JSON ------------------------------------------------------------


def _b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _generators(data: Any) -> dict[str, torch.Generator]:
    """The generators that decide a DataLoader's order: its own and its sampler's."""
    if not isinstance(data, torch.utils.data.DataLoader):
        return {}
    batch_sampler = getattr(data, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", None) or data.sampler
    found: dict[str, torch.Generator] = {}
    for name, gen in (("loader", data.generator), ("sampler", getattr(sampler, "generator", None))):
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found.values()):
            found[name] = gen
    return found


def capture_rng(data: Any = None) -> dict[str, Any]:
    """This process's random-number states (torch, CUDA, numpy, Python, and the generators of
    the DataLoader ``data``) as a JSON-serialisable dict."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
        "generators": {name: _b64(g.get_state()) for name, g in _generators(data).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any], data: Any = None) -> None:
    """Set the states :func:`capture_rng` recorded."""
    torch.set_rng_state(_unb64(state["torch"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])
    for name, gen in _generators(data).items():
        if name in state["generators"]:
            gen.set_state(_unb64(state["generators"][name]))


# -- writing ----------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _replace(tmp: Path, path: Path) -> None:
    _fsync(tmp)
    os.replace(tmp, path)


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state dict as (tensors for safetensors, the JSON rest naming them)."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        record: dict[str, Any] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                key = f"state.{index}.{name}"
                tensors[key] = value.detach().cpu().contiguous()
                record[name] = {"tensor": key}
            else:
                record[name] = {"value": value}
        per_param[str(index)] = record
    return tensors, {"state": per_param, "param_groups": state["param_groups"]}


def write(
    directory: str | Path,
    record: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> Path:
    """Write a checkpoint (see the module docstring) and return the path of its JSON file.

    Args:
        directory: The checkpoint directory (created if missing).
        record: The JSON part: counters, config, history, scheduler state, RNG states.
        model: Its state dict goes to ``step-N.model.safetensors``.
        optimizer: Its tensors go to ``step-N.optimizer.safetensors``, the rest to the JSON.
    """
    from safetensors.torch import save_file, save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"step-{int(record['step']):08d}"
    files = {"model": f"{stem}.model.safetensors", "optimizer": f"{stem}.optimizer.safetensors"}
    tensors, optim_record = _split_optimizer(optimizer.state_dict())
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "torchslim_version": torchslim.__version__,
        "torch_version": torch.__version__,
        **record,
        "optimizer": optim_record,
        "files": files,
    }
    try:
        text = json.dumps(full, indent=1, allow_nan=True)
    except TypeError as exc:
        raise CheckpointError(f"the checkpoint state is not JSON-serialisable: {exc}") from exc
    tmp_model = directory / f".{files['model']}.tmp"
    tmp_optim = directory / f".{files['optimizer']}.tmp"
    tmp_json = directory / f".{_POINTER}.tmp"
    save_model(model, str(tmp_model))
    _replace(tmp_model, directory / files["model"])
    save_file(tensors, str(tmp_optim))
    _replace(tmp_optim, directory / files["optimizer"])
    tmp_json.write_text(text + "\n")
    _replace(tmp_json, directory / _POINTER)
    for stale in directory.glob("step-*.safetensors"):
        if stale.name not in files.values():
            stale.unlink(missing_ok=True)
    _logger.debug("wrote checkpoint %s (step %s)", directory, record["step"])
    return directory / _POINTER


# -- reading ----------------------------------------------------------------------------------


def exists(directory: str | Path) -> bool:
    """Whether ``directory`` holds a checkpoint (its ``checkpoint.json``)."""
    return (Path(directory) / _POINTER).is_file()


def read(directory: str | Path) -> dict[str, Any] | None:
    """The JSON part of the checkpoint in ``directory``, or ``None`` when there is none."""
    path = Path(directory) / _POINTER
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); delete it to start over") from exc
    if record.get("format") != FORMAT or record.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format {record.get('format')!r} version {record.get('format_version')!r}; "
            f"this torchslim reads {FORMAT!r} up to version {FORMAT_VERSION}: upgrade torchslim "
            "or choose another checkpoint directory"
        )
    for name in record["files"].values():
        if not (path.parent / name).is_file():
            raise CheckpointError(f"{path} names {name}, which is missing from {path.parent}")
    record["directory"] = str(path.parent)
    return record


def _shape(shape: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


def load_model_state(model: torch.nn.Module, record: dict[str, Any]) -> None:
    """Load the checkpoint's weights into ``model`` (the same, already pruned, model object).

    Raises:
        CheckpointError: a tensor's shape differs, or tensors are missing or unexpected; the
            message names the first ones.
    """
    from safetensors import safe_open
    from safetensors.torch import load_model

    file = Path(record["directory"]) / record["files"]["model"]
    own = model.state_dict()
    with safe_open(str(file), framework="pt") as f:
        shapes = {k: _shape(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    wrong = [k for k, v in own.items() if k in shapes and _shape(v.shape) != shapes[k]]
    if wrong:
        name = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors)" if len(wrong) > 1 else ""
        raise CheckpointError(
            f"checkpoint tensor {name!r} in {file} has shape {shapes[name]} but the model's has "
            f"{_shape(own[name].shape)}{more}: the checkpoint comes from a model pruned "
            "differently; resume into the same pruned model (e.g. ts.load the saved model it "
            "started from), or pass resume=False or another checkpoint_dir to start over"
        )
    missing, unexpected = load_model(model, str(file), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"the checkpoint {file} does not fit the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}; resume into the model it was written from, or "
            "pass resume=False or another checkpoint_dir to start over"
        )


def load_optimizer_state(optimizer: torch.optim.Optimizer, record: dict[str, Any]) -> None:
    """Load the checkpoint's optimizer state (tensors from safetensors, the rest from JSON)."""
    from safetensors.torch import load_file

    file = Path(record["directory"]) / record["files"]["optimizer"]
    tensors = load_file(str(file))
    part = record["optimizer"]
    state = {
        int(index): {
            name: tensors[entry["tensor"]] if "tensor" in entry else entry["value"]
            for name, entry in entries.items()
        }
        for index, entries in part["state"].items()
    }
    groups = []
    for index, saved in enumerate(part["param_groups"]):
        # JSON turned tuples (Adam's betas) into lists: give them their type back
        current = optimizer.param_groups[index] if index < len(optimizer.param_groups) else {}
        groups.append(
            {
                k: tuple(v) if isinstance(current.get(k), tuple) and isinstance(v, list) else v
                for k, v in saved.items()
            }
        )
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(
            f"the optimizer state in {file} does not fit this model's parameters ({exc}); "
            "pass resume=False or another checkpoint_dir to start over"
        ) from exc
