"""``ts.export_onnx``: export a model to ONNX, check the file, and verify it against eager PyTorch.

Which exporter: ``exporter="auto"`` (the default) uses PyTorch's TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``) and falls back to the ``torch.export``-based one
(``dynamo=True``) when it fails. Measured on torch 2.14 over the 83 torchvision classification
models at 64 px with a dynamic batch dimension, the TorchScript exporter exported and matched 75 of
them (all but AlexNet and the VGGs, whose adaptive pooling from a 2x2 map to 7x7 it cannot
translate) in 0.1-3 s each for the small ones, while the dynamo exporter took 1-15 s each, failed
on Swin with a dynamic batch, and lost the dynamic batch of ViT; it does export AlexNet and VGG,
hence the fallback. The TorchScript exporter is deprecated upstream; when PyTorch removes it,
``auto`` falls back to dynamo for every model. ``exporter="torchscript"`` or ``"dynamo"`` forces
one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchslim._extras import require
from torchslim._inputs import Inputs, as_inputs, eval_mode
from torchslim.errors import ConfigError, ExportError
from torchslim.export._io import FlatModule, batched, flatten_outputs, random_batch
from torchslim.export._io import input_names as default_input_names
from torchslim.export._verify import OutputCheck, default_batch_sizes, verify_onnx

__all__ = ["ExportResult", "export_onnx", "EXPORTERS"]

_logger = logging.getLogger(__name__)

#: Accepted values of ``exporter``.
EXPORTERS = ("auto", "torchscript", "dynamo")

_EXTERNAL_BYTES = 1_800_000_000  # weights above this go to external data (protobuf's 2 GB cap)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how closely it matches eager PyTorch.

    Attributes:
        path: The ``.onnx`` file.
        opset: Default-domain opset of the graph.
        exporter: ``"torchscript"`` or ``"dynamo"``: the exporter that wrote the file.
        input_names, output_names: Graph inputs and outputs, in order.
        dynamic_batch: Whether the leading dimension of batched inputs and outputs is symbolic.
        batch_sizes: Batch sizes verified (the example's first); empty when not verified.
        checks: One :class:`OutputCheck` per output and batch size.
        file_bytes: Size of the file plus any external weight files.
        rtol, atol: Tolerances the checks passed.
    """

    path: str
    opset: int
    exporter: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_batch: bool
    batch_sizes: tuple[int, ...]
    checks: tuple[OutputCheck, ...]
    file_bytes: int
    rtol: float
    atol: float

    @property
    def verified(self) -> bool:
        """Whether ONNX Runtime's outputs were compared with eager PyTorch."""
        return bool(self.checks)

    def _worst(self, field: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for c in self.checks:
            out[c.output] = max(out.get(c.output, 0.0), getattr(c, field))
        return out

    @property
    def max_abs_diff(self) -> dict[str, float]:
        """Largest absolute difference per output, over every batch size checked."""
        return self._worst("max_abs_diff")

    @property
    def max_rel_diff(self) -> dict[str, float]:
        """Largest difference relative to the output's scale (``max|eager|``), per output."""
        return self._worst("max_rel_diff")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "path": self.path,
            "opset": self.opset,
            "exporter": self.exporter,
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
            "dynamic_batch": self.dynamic_batch,
            "batch_sizes": list(self.batch_sizes),
            "checks": [c.to_dict() for c in self.checks],
            "file_bytes": self.file_bytes,
            "rtol": self.rtol,
            "atol": self.atol,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportResult:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        for key in ("input_names", "output_names", "batch_sizes"):
            data[key] = tuple(data[key])
        data["checks"] = tuple(OutputCheck(**c) for c in data["checks"])
        return cls(**data)

    def table(self) -> str:
        """Per-output verification figures as text."""
        if not self.checks:
            return "not verified (verify=False)"
        rows = [("output", "max abs diff", "max rel diff", "batch sizes")]
        abs_, rel = self.max_abs_diff, self.max_rel_diff
        for name in self.output_names:
            sizes = ", ".join(str(c.batch_size) for c in self.checks if c.output == name)
            rows.append((name, f"{abs_.get(name, 0.0):.3g}", f"{rel.get(name, 0.0):.3g}", sizes))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            "  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        batch = "dynamic batch" if self.dynamic_batch else "static shapes"
        head = (
            f"{self.path}: opset {self.opset}, {self.exporter} exporter, {batch}, "
            f"{self.file_bytes / 2**20:.2f} MiB; inputs {', '.join(self.input_names)}; "
            f"outputs {', '.join(self.output_names)}"
        )
        return f"{head}\n{self.table()}"


def _check_names(kind: str, names: list[str], count: int) -> None:
    if len(names) != count:
        raise ConfigError(f"{kind}_names has {len(names)} names but the model has {count} {kind}s")
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{kind}_names must be distinct non-empty strings, got {names}")


@contextlib.contextmanager
def _quiet_torchscript_log() -> Iterator[None]:
    """Keep the TorchScript exporter's C++ log (a whole IR graph when it fails) out of stdout.

    The exporter switches its log on and leaves it on (torch 2.14); the log goes to file
    descriptor 1, so it is caught there, passed to the debug log, and the switch is put back.
    """
    get = getattr(torch._C, "_jit_is_onnx_log_enabled", None)
    put = getattr(torch._C, "_jit_set_onnx_log_enabled", None)
    was_on = bool(get()) if get else False
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            if put:
                put(was_on)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                _logger.debug("TorchScript exporter log: %s", text[:2000])


def _run_exporter(
    name: str,
    flat: FlatModule,
    inputs: Inputs,
    path: Path,
    *,
    opset: int | None,
    in_names: list[str],
    out_names: list[str],
    dynamic_inputs: list[bool],
    dynamic_outputs: list[bool],
    external: bool,
) -> None:
    tensors = tuple(inputs.tensors())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if name == "torchscript":
            axes = {n: {0: "batch"} for n, d in zip(in_names, dynamic_inputs, strict=True) if d}
            axes |= {n: {0: "batch"} for n, d in zip(out_names, dynamic_outputs, strict=True) if d}
            with _quiet_torchscript_log():
                torch.onnx.export(
                    flat,
                    tensors,
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=in_names,
                    output_names=out_names,
                    dynamic_axes=axes or None,
                    do_constant_folding=True,
                )
        else:
            require("onnxscript", "the dynamo ONNX exporter")
            if any(dynamic_inputs) and tensors[dynamic_inputs.index(True)].shape[0] == 1:
                # torch.export specialises size-1 dimensions: trace on a batch of 2 drawn alike
                tensors = tuple(random_batch(inputs, 2, seed=0).tensors())
            batch = torch.export.Dim("batch")
            shapes = tuple({0: batch} if d else None for d in dynamic_inputs)
            torch.onnx.export(
                flat,
                tensors,
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=in_names,
                output_names=out_names,
                dynamic_shapes=(shapes,) if any(dynamic_inputs) else None,
                external_data=external,
                verbose=False,
            )
    for message in {str(w.message).splitlines()[0] for w in caught if str(w.message)}:
        _logger.debug("%s exporter: %s", name, message)


def _opset_and_size(path: Path) -> tuple[int, int]:
    onnx = require("onnx", "ONNX export")
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    files = {path.resolve()}
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next(e.value for e in tensor.external_data if e.key == "location")
            files.add((path.parent / location).resolve())
    return int(opset), sum(f.stat().st_size for f in files if f.exists())


def export_onnx(
    model: torch.nn.Module,
    example_inputs: Any,
    path: str | Path,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    verify: bool = True,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    exporter: str = "auto",
    batch_sizes: tuple[int, ...] | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` to an ONNX file, check it, and verify it in ONNX Runtime against eager.

    The model runs in eval mode; its train/eval flags and parameters are left exactly as they were.
    The file is checked with ``onnx.checker`` and then, with ``verify``, run by ONNX Runtime (CPU)
    on the example inputs and, with ``dynamic_batch``, on random batches of other sizes drawn like
    the example (floats: its mean and spread; integers: its range). Each output's largest
    difference from eager PyTorch (``torch.no_grad``) must be at most ``atol + rtol * max|eager|``.

    Args:
        model: The model (any device; ONNX Runtime verifies on the CPU).
        example_inputs: A tensor, a tuple of tensors, or a dict of keyword inputs.
        path: The ``.onnx`` file to write (folders are created). Weights over ~1.8 GB go to
            external data files beside it.
        opset: ONNX opset; ``None`` takes the exporter's default.
        dynamic_batch: Make the leading dimension of batched inputs (those whose leading size is
            the first input's) and outputs symbolic. ``False`` fixes every shape to the example's.
        verify: Compare ONNX Runtime with eager PyTorch (needs ``onnxruntime``).
        input_names: Graph input names, one per input tensor. Default: ``input`` (one positional
            tensor), ``input_0``, ``input_1``… (several), the keywords of keyword inputs.
        output_names: Graph output names, one per output tensor. Default: ``output`` (one tensor),
            ``output_0``… (tuples), the keys of dicts and the field names of dataclasses.
        rtol, atol: Tolerances of the verification, relative to each output's scale.
        exporter: ``"auto"``, ``"torchscript"`` or ``"dynamo"`` (see the module docs).
        batch_sizes: Other batch sizes to verify besides the example's; default: two others
            (2 and 3 for an example of batch 1, then 1 and ``b + 1`` for batch ``b``).
        seed: Seed of the random batches.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: when no exporter can export the model, the checker rejects the file, or an
            output differs from eager above tolerance (the message names the output, the
            difference and the batch size; the file is kept for inspection).
        ConfigError: on invalid options.
    """
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}; got {exporter!r}")
    if rtol < 0 or atol < 0:
        raise ConfigError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    onnx = require("onnx", "ONNX export")
    if verify:
        require("onnxruntime", "verifying an ONNX export")
    inputs: Inputs = as_inputs(example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = tuple(inputs.tensors())
    batch = inputs.batch_size
    dynamic_batch = dynamic_batch and batch is not None

    with eval_mode(model):
        flat = FlatModule(model, inputs)
        with torch.no_grad():
            reference = flatten_outputs(inputs.call(model))
        in_names = list(input_names) if input_names is not None else default_input_names(inputs)
        out_names = list(output_names) if output_names is not None else [n for n, _ in reference]
        _check_names("input", in_names, len(tensors))
        _check_names("output", out_names, len(reference))
        if set(in_names) & set(out_names):
            raise ConfigError(
                f"names {sorted(set(in_names) & set(out_names))} are both inputs and outputs; "
                "pass input_names= or output_names= to tell them apart"
            )
        dyn_in = batched(inputs) if dynamic_batch else [False] * len(tensors)
        dyn_out = [dynamic_batch and t.dim() > 0 and t.shape[0] == batch for _, t in reference]
        weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
        failures: list[str] = []
        used = None
        for name in order:
            try:
                _run_exporter(
                    name,
                    flat,
                    inputs,
                    path,
                    opset=opset,
                    in_names=in_names,
                    out_names=out_names,
                    dynamic_inputs=dyn_in,
                    dynamic_outputs=dyn_out,
                    external=weight_bytes > _EXTERNAL_BYTES,
                )
            except Exception as exc:  # noqa: BLE001 - any exporter failure moves to the next one
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                failures.append(f"{name}: {type(exc).__name__}: {first}")
                _logger.info("the %s exporter failed (%s)", name, first)
                continue
            used = name
            break
        if used is None:
            raise ExportError(
                f"{type(model).__name__} could not be exported to ONNX ("
                + "; ".join(failures)
                + "). Rewrite the failing op, or try the other exporter with exporter=..."
            )
        try:
            onnx.checker.check_model(str(path))  # the path form also handles > 2 GB models
        except Exception as exc:  # noqa: BLE001 - onnx raises its own ValidationError types
            raise ExportError(f"the ONNX checker rejected {path}: {exc}") from exc
        opset_used, size = _opset_and_size(path)
        checks: list[OutputCheck] = []
        sizes: tuple[int, ...] = ()
        if verify:
            others = default_batch_sizes(batch)[1:] if batch is not None else ()
            if batch_sizes is not None:
                others = tuple(b for b in dict.fromkeys(batch_sizes) if b != batch)
            checks = verify_onnx(
                path,
                flat,
                inputs,
                in_names,
                out_names,
                others if dynamic_batch else (),
                rtol=rtol,
                atol=atol,
                seed=seed,
            )
            sizes = tuple(dict.fromkeys(c.batch_size for c in checks if c.batch_size is not None))
    result = ExportResult(
        path=str(path),
        opset=opset_used,
        exporter=used,
        input_names=tuple(in_names),
        output_names=tuple(out_names),
        dynamic_batch=dynamic_batch,
        batch_sizes=sizes,
        checks=tuple(checks),
        file_bytes=size,
        rtol=rtol,
        atol=atol,
    )
    _logger.info("exported %s", result)
    return result
