"""Run an exported file in ONNX Runtime and compare it with eager PyTorch, output by output.

The comparison is relative to each output's scale: an output passes when its largest absolute
difference is at most ``atol + rtol * max|eager|``. Element-wise relative differences are not used,
because float32 rounding in a deep network leaves errors of the output's scale on elements that
happen to be near zero, which says nothing about the export.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchslim._extras import require
from torchslim._inputs import Inputs
from torchslim.errors import ConfigError, ExportError
from torchslim.export._io import FlatModule, random_batch

__all__ = ["OutputCheck", "ort_session", "to_numpy", "verify_onnx", "default_batch_sizes"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputCheck:
    """How far one ONNX output is from eager PyTorch on one batch.

    Attributes:
        output: Output name. batch_size: Leading size of the inputs it ran on.
        max_abs_diff: Largest absolute difference.
        max_rel_diff: ``max_abs_diff / max|eager|``: the difference relative to the output's scale.
        max_abs_eager: Largest absolute eager value (the scale).
    """

    output: str
    batch_size: int | None
    max_abs_diff: float
    max_rel_diff: float
    max_abs_eager: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "batch_size": self.batch_size,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "max_abs_eager": self.max_abs_eager,
        }


def session_options(threads: int, *, optimize: bool = True) -> Any:
    """ONNX Runtime session options as torchslim makes every session: every graph optimisation
    on (``optimize=False``: none, for a graph that is optimised already), ``threads`` intra-op
    threads, sequential execution, errors only in the log."""
    ort = require("onnxruntime", "running an ONNX model")
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    return options


def ort_session(
    path: str | Path, *, threads: int, providers: Sequence[Any] = ("CPUExecutionProvider",)
) -> Any:
    """An ONNX Runtime session with every graph optimisation on and ``threads`` intra-op threads."""
    ort = require("onnxruntime", "running an ONNX model")
    return ort.InferenceSession(str(path), session_options(threads), providers=list(providers))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU NumPy copy of ``t`` (ONNX Runtime's Python API takes NumPy arrays)."""
    if t.dtype == torch.bfloat16:
        raise ConfigError(
            "bfloat16 inputs cannot be fed to ONNX Runtime through NumPy; export in float32 "
            "(model.float()) or pass verify=False"
        )
    return t.detach().cpu().contiguous().numpy()


def default_batch_sizes(batch: int) -> tuple[int, ...]:
    """The example's batch size and two others: ``1 -> (1, 2, 3)``, ``4 -> (4, 1, 5)``."""
    return (batch, *sorted({1, batch + 1, 2 * batch + 1} - {batch})[:2])


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _compare(name: str, got: Any, want: torch.Tensor, batch: int | None) -> OutputCheck:
    ref = want.detach().cpu()
    ref = (ref.double() if not ref.is_complex() else ref.cdouble()).numpy()
    got = np.asarray(got)
    if got.shape != ref.shape:
        raise ExportError(
            f"ONNX output {name!r} has shape {tuple(got.shape)} but eager PyTorch gives "
            f"{tuple(ref.shape)} (batch size {batch}); if a batch size is baked into the graph, "
            "export with dynamic_batch=False or exporter='dynamo'"
        )
    got = got.astype(ref.dtype)
    same = (got == ref) | (np.isnan(got) & np.isnan(ref))  # equal infinities and NaN pairs agree
    diff = np.where(same, 0.0, np.abs(got - ref))
    diff = np.nan_to_num(diff, nan=np.inf)
    finite = np.abs(ref[np.isfinite(ref)])
    scale = float(finite.max()) if finite.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return OutputCheck(name, batch, max_abs, rel, scale)


def verify_onnx(
    path: Path,
    flat: FlatModule,
    inputs: Inputs,
    input_names: Sequence[str],
    output_names: Sequence[str],
    other_batch_sizes: Sequence[int],
    *,
    rtol: float,
    atol: float,
    seed: int,
) -> list[OutputCheck]:
    """Run ``path`` on the example inputs, then on random batches of ``other_batch_sizes``.

    The eager reference is ``flat`` (already in eval mode) under :func:`torch.no_grad`.

    Raises:
        ExportError: naming the first output whose difference is above tolerance, by how much and
            on which batch size.
    """
    try:
        session = ort_session(path, threads=torch.get_num_threads())
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"ONNX Runtime cannot load {path}: {_first_line(exc)}") from exc
    graph_inputs = {i.name for i in session.get_inputs()}  # exporters may drop unused inputs
    checks: list[OutputCheck] = []
    for i, batch in enumerate((inputs.batch_size, *other_batch_sizes)):
        run_inputs = inputs if i == 0 else random_batch(inputs, batch, seed + i)
        tensors = run_inputs.tensors()
        feed = {
            n: to_numpy(t) for n, t in zip(input_names, tensors, strict=True) if n in graph_inputs
        }
        try:
            got = session.run(list(output_names), feed)
        except Exception as exc:  # noqa: BLE001
            hint = (
                "; the graph may have a batch size baked in: export with dynamic_batch=False "
                "or exporter='dynamo'"
                if i > 0
                else ""
            )
            raise ExportError(
                f"ONNX Runtime failed to run {path} on batch size {run_inputs.batch_size}: "
                f"{_first_line(exc)}{hint}"
            ) from exc
        with torch.no_grad():
            want = flat(*tensors)
        for name, g, w in zip(output_names, got, want, strict=True):
            check = _compare(name, g, w, run_inputs.batch_size)
            _logger.debug("%s", check)
            checks.append(check)
            if check.max_abs_diff > atol + rtol * check.max_abs_eager:
                where = "the example inputs" if i == 0 else f"a random batch of size {batch}"
                hint = (
                    "it matched on the example inputs, so a batch size may be baked into the "
                    "graph (export with dynamic_batch=False, or try exporter='dynamo'), or an op "
                    "differs from eager on some values only"
                    if i > 0
                    else "an op the exporter translates differently from eager (try the other "
                    "exporter: exporter='dynamo' or 'torchscript'), a custom autograd Function "
                    "whose symbolic differs from its forward, or tolerances too tight for the "
                    "dtype (rtol=, atol=)"
                )
                raise ExportError(
                    f"ONNX output {name!r} differs from eager PyTorch on {where} (batch size "
                    f"{run_inputs.batch_size}): max abs diff {check.max_abs_diff:.3g}, max rel "
                    f"diff {check.max_rel_diff:.3g} (of max |eager| {check.max_abs_eager:.3g}), "
                    f"above atol {atol:g} + rtol {rtol:g} x max |eager|. Likely cause: {hint}. "
                    f"The exported file is kept at {path} for inspection."
                )
    return checks
