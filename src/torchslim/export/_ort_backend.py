"""The ``onnxruntime`` latency backend: ``ts.profile(model, x, backend="onnxruntime")``.

The model is exported to a temporary ONNX file with static shapes (verified against eager on the
example inputs) and run by an ONNX Runtime session with every graph optimisation on
(``ORT_ENABLE_ALL``), sequential execution and as many intra-op threads as the profile pins, so
the reported thread count is the one ONNX Runtime used. CPU models run on the CPU execution
provider; CUDA models on the CUDA execution provider, with inputs and outputs bound on the GPU so
that no host copy is timed. The timing loop is the shared one (warm-up, then each run timed alone).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from torchslim._extras import require
from torchslim._inputs import Inputs
from torchslim.errors import ConfigError
from torchslim.profiling._latency import LatencyBackend, register_latency_backend

__all__ = ["OnnxRuntimeBackend"]

_logger = logging.getLogger(__name__)


def _providers(ort: Any, device: torch.device) -> list[Any]:
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                f"this ONNX Runtime has no CUDAExecutionProvider, so it cannot time on {device}; "
                "install onnxruntime-gpu, or profile on the CPU with device='cpu'"
            )
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise ConfigError(f"the onnxruntime backend runs on cpu or cuda, not {device}")


@register_latency_backend("onnxruntime")
class OnnxRuntimeBackend(LatencyBackend):
    """ONNX Runtime inference of the exported model.

    Args:
        onnx_model: Time this instead of exporting the model: an ``.onnx`` file (the session is
            made here, with the profile's threads) or a prepared ``onnxruntime.InferenceSession``
            (it must have been made with ``intra_op_num_threads`` equal to the profile's
            ``threads``, which cannot be changed afterwards). Its inputs must take the example's
            tensors, by name or in order.
        exporter, opset: Passed to :func:`torchslim.export_onnx`.
        verify: Check the exported graph against eager on the example inputs before timing.

    After :meth:`prepare`, ``session`` holds the ONNX Runtime session that was timed.
    """

    settle_ms = 40.0  # other sessions' spinning workers go idle (see LatencyBackend.settle_ms)

    def __init__(
        self,
        onnx_model: str | Path | Any = None,
        *,
        exporter: str = "auto",
        opset: int | None = None,
        verify: bool = True,
    ) -> None:
        self.onnx_model = onnx_model
        self.exporter = exporter
        self.opset = opset
        self.verify = verify
        self.session: Any = None

    def prepare(
        self, model: torch.nn.Module, inputs: Inputs, device: torch.device, threads: int
    ) -> Callable[[], Any]:
        ort = require("onnxruntime", "the onnxruntime latency backend")
        from torchslim.export._io import input_names
        from torchslim.export._onnx import export_onnx
        from torchslim.export._verify import ort_session

        providers = _providers(ort, device)
        names = input_names(inputs)
        if isinstance(self.onnx_model, (str, Path)):
            session = ort_session(self.onnx_model, threads=threads, providers=providers)
        elif self.onnx_model is not None:
            session = self.onnx_model
            used = session.get_session_options().intra_op_num_threads
            if used != threads:
                raise ConfigError(
                    f"the ONNX Runtime session was made with intra_op_num_threads={used} but the "
                    f"profile pins {threads} threads; make the session with "
                    f"SessionOptions.intra_op_num_threads={threads}, pass threads={used or 'N'}, "
                    "or pass the .onnx path instead"
                )
            if device.type == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
                raise ConfigError(
                    f"the ONNX Runtime session runs on {session.get_providers()}, not on CUDA; "
                    f"make it with the CUDAExecutionProvider to time it on {device}"
                )
        else:
            with tempfile.TemporaryDirectory(prefix="torchslim-ort-") as tmp:
                result = export_onnx(
                    model,
                    inputs,
                    Path(tmp) / "model.onnx",
                    dynamic_batch=False,
                    verify=self.verify,
                    exporter=self.exporter,
                    opset=self.opset,
                )
                names = list(result.input_names)
                session = ort_session(result.path, threads=threads, providers=providers)
        self.session = session
        feed = _match_inputs(session, names, inputs.tensors())
        _logger.debug("onnxruntime session: %s, %d intra-op threads", providers, threads)
        if device.type == "cuda":
            return _cuda_runner(session, feed, device)
        arrays = {name: t.detach().cpu().contiguous().numpy() for name, t in feed.items()}
        return lambda: session.run(None, arrays)


def _match_inputs(
    session: Any, names: list[str], tensors: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    graph = [i.name for i in session.get_inputs()]
    if set(graph) <= set(names):
        by_name = dict(zip(names, tensors, strict=True))
        return {n: by_name[n] for n in graph}
    if len(graph) == len(tensors):
        return dict(zip(graph, tensors, strict=True))
    raise ConfigError(
        f"the ONNX model takes inputs {graph} but the example inputs are {names}; give inputs "
        "that match, by name or in order"
    )


def _cuda_runner(session: Any, feed: dict[str, torch.Tensor], device: torch.device) -> Callable:
    binding = session.io_binding()
    index = device.index or 0
    keep = {n: t.detach().to(device).contiguous() for n, t in feed.items()}  # alive while timed
    for name, t in keep.items():
        binding.bind_input(
            name,
            device_type="cuda",
            device_id=index,
            element_type=torch.empty(0, dtype=t.dtype).numpy().dtype,
            shape=tuple(t.shape),
            buffer_ptr=t.data_ptr(),
        )
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", index)

    def run() -> None:
        session.run_with_iobinding(binding)

    run.keep = keep  # type: ignore[attr-defined]
    return run
