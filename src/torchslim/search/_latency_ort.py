"""ONNX Runtime kernels: the nodes of the graph ONNX Runtime really runs, each timed alone.

A model's ONNX Runtime latency is that of the graph left after ONNX Runtime's optimisations, not
of the exported one: batch norm folded into convolutions, additions and activations fused into
them, common subexpressions computed once, and on x86 CPUs convolutions and pooling rewritten to
a blocked channel layout (``com.microsoft.nchwc``) with ``ReorderInput``/``ReorderOutput`` nodes
wherever the layout changes, which depends on channel counts (a convolution whose output
channels are not a multiple of the block size stays in the plain layout). Rules written to mimic
this from PyTorch modules break on every new model and ONNX Runtime release, so the table asks
ONNX Runtime: the model is exported (:func:`torchslim.export_onnx`, static shapes), a session
optimises it as the ``onnxruntime`` latency backend does (every optimisation, the table's thread
count) and writes the optimised graph, and one run with every intermediate tensor exposed gives
each node's input and output shapes. Each node is a kernel:

- its *name* is the node's name, which carries the module path of what it computes
  (``/model/stages/stages.1/stages.1.0/relu/Relu_output_0_nchwc``: conv1, bn1 and relu of a
  residual block, fused);
- its *key* is the operator, its attributes, and the shapes and types of its inputs (weights
  marked ``w``) and outputs::

    com.microsoft.nchwc.Conv(activation=Relu, ..., strides=[1, 1])
        @ (1x16x28x28:float32, w 16x16x3x3:float32, w 16:float32) -> (1x16x28x28:float32)

- its replay (:class:`OrtNode`) is a one-node ONNX model with the node's weights, and its inputs
  as recorded in the run (the real values, so shape tensors stay valid).

Timing one alone (:class:`OrtNodeBackend`): a session on the one-node model with graph
optimisations off (the node is already what the optimiser made; the blocked layout of its inputs
is kept), the table's threads and sequential execution, inputs and outputs bound once to
preallocated buffers (I/O binding). Without the binding, each run would allocate its outputs and
copy them into new NumPy arrays, which costs more than many nodes do (measured: a 3x3
convolution of 24 channels at 28x28, 48 us through ``session.run`` against 32-39 us inside the
model). The table's empty kernel is an ``Identity`` node on one element, timed the same way.
Inside a model, what a node costs beyond its time alone is what the table's correction fits:
per-node executor work (``kernels``), weights read from memory rather than from the cache that
a node timed alone keeps them in (``params_m``), and memory-bound nodes (additions, activations,
pooling, layout reorders), which read data other threads have just written (``memory_ms``;
measured: a reorder costs 4-6 us inside a model, 1 us alone).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim._extras import require
from torchslim._inputs import Inputs
from torchslim.errors import ConfigError, ExportError
from torchslim.profiling._latency import LatencyBackend
from torchslim.search._latency_kernels import Kernel

__all__ = ["OrtNode", "OrtNodeBackend", "ort_empty_kernel", "ort_kernels"]

#: Domain of ONNX Runtime's blocked-layout operators, and the nodes that change layout.
NCHWC = "com.microsoft.nchwc"
REORDERS = ("ReorderInput", "ReorderOutput")


@dataclass(frozen=True, eq=False)
class OrtNode:
    """One node of an optimised ONNX Runtime graph, as a model that runs it alone.

    Attributes:
        model: The serialised one-node ONNX model (weights included).
        inputs: ``(name, array)`` for each of its graph inputs, the values recorded in the run.
        outputs: ``(name, shape, dtype)`` of each of its outputs.
    """

    model: bytes
    inputs: tuple[tuple[str, np.ndarray], ...]
    outputs: tuple[tuple[str, tuple[int, ...], str], ...]


class OrtNodeBackend(LatencyBackend):
    """Times an :class:`OrtNode` in its own session with inputs and outputs bound once."""

    name = "onnxruntime"
    settle_ms = 40.0  # other sessions' spinning workers go idle first (LatencyBackend.settle_ms)

    def __init__(self, node: OrtNode) -> None:
        self.node = node
        self._runners: dict[int, Callable[[], Any]] = {}  # one session per thread count

    def prepare(
        self, model: nn.Module, inputs: Inputs, device: torch.device, threads: int
    ) -> Callable[[], Any]:
        if device.type != "cpu":
            raise ConfigError(f"ONNX Runtime nodes are timed on the CPU, not on {device}")
        if threads not in self._runners:
            self._runners[threads] = self._runner(threads)
        return self._runners[threads]

    def _runner(self, threads: int) -> Callable[[], Any]:
        ort = require("onnxruntime", "the latency table's onnxruntime backend")
        from torchslim.export._verify import session_options

        session = ort.InferenceSession(
            self.node.model,
            session_options(threads, optimize=False),
            providers=["CPUExecutionProvider"],
        )
        binding = session.io_binding()
        keep = []
        for name, array in self.node.inputs:
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
            binding.bind_ortvalue_input(name, value)
            keep.append(value)
        for name, shape, dtype in self.node.outputs:
            value = ort.OrtValue.ortvalue_from_numpy(np.empty(shape, dtype=dtype))
            binding.bind_ortvalue_output(name, value)
            keep.append(value)

        def run() -> None:
            session.run_with_iobinding(binding)

        run.keep = keep  # type: ignore[attr-defined]
        return run


# ---------------------------------------------------------------------------------- the graph
def _sig(shape: tuple[int, ...], dtype: Any) -> str:
    return f"{'x'.join(map(str, shape)) or 'scalar'}:{np.dtype(dtype).name}"


def _attr(onnx: Any, attribute: Any) -> str:
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    elif isinstance(value, onnx.TensorProto):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.data_type)
        value = f"tensor({_sig(tuple(value.dims), dtype)})"
    elif isinstance(value, onnx.GraphProto):
        value = f"graph({len(value.node)} nodes)"
    elif isinstance(value, list):
        value = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in value]
    return f"{attribute.name}={value}"


def _graph_error(what: str, exc: BaseException) -> ExportError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ExportError(
        f"ONNX Runtime could not {what} the exported model for the latency table: {first}; "
        "measure this model whole (LatencyTable.measure) or use the eager table"
    )


def _optimised_graph(
    model: nn.Module, inputs: Inputs, threads: int
) -> tuple[Any, dict[str, np.ndarray]]:
    """Export ``model``, let ONNX Runtime optimise it, and run the optimised graph once with
    every node output exposed; returns the graph's model and every tensor's value by name."""
    ort = require("onnxruntime", "the latency table's onnxruntime backend")
    onnx = require("onnx", "the latency table's onnxruntime backend")
    from torchslim.export._onnx import export_onnx
    from torchslim.export._verify import session_options, to_numpy

    with tempfile.TemporaryDirectory(prefix="torchslim-latency-") as folder:
        result = export_onnx(
            model, inputs, Path(folder) / "model.onnx", dynamic_batch=False, verify=False
        )
        options = session_options(threads)
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        try:
            ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
            graph_model = onnx.load(str(Path(folder) / "optimized.onnx"))
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types
            raise _graph_error("optimise", exc) from exc
    graph_inputs = {i.name for i in graph_model.graph.input}
    feed = {
        name: to_numpy(t)
        for name, t in zip(result.input_names, inputs.tensors(), strict=True)
        if name in graph_inputs
    }
    exposed = onnx.ModelProto()
    exposed.CopyFrom(graph_model)
    have = {o.name for o in exposed.graph.output}
    for node in exposed.graph.node:
        for out in node.output:
            if out and out not in have:
                exposed.graph.output.append(onnx.ValueInfoProto(name=out))
                have.add(out)
    try:
        session = ort.InferenceSession(
            exposed.SerializeToString(),
            session_options(threads, optimize=False),
            providers=["CPUExecutionProvider"],
        )
        names = [o.name for o in session.get_outputs()]
        values = dict(zip(names, session.run(names, feed), strict=True))
    except Exception as exc:  # noqa: BLE001
        raise _graph_error("run every node of", exc) from exc
    values.update(feed)
    return graph_model, values


def _one_node_model(onnx: Any, graph_model: Any, node: Any, weights: dict, values: dict) -> OrtNode:
    rename: dict[str, str] = {}
    feeds = []
    for name in node.input:
        if name and name not in weights and name not in rename:
            rename[name] = f"in{len(rename)}"
            feeds.append((rename[name], values[name]))
    single = onnx.helper.make_node(
        node.op_type,
        [rename.get(name, name) for name in node.input],
        [f"out{j}" if name else "" for j, name in enumerate(node.output)],
        domain=node.domain,
    )
    single.attribute.extend(node.attribute)
    outputs = tuple(
        (f"out{j}", tuple(np.shape(values[name])), np.asarray(values[name]).dtype.name)
        for j, name in enumerate(node.output)
        if name
    )
    graph = onnx.helper.make_graph(
        [single],
        "kernel",
        [
            onnx.helper.make_tensor_value_info(
                new, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(a).dtype), np.shape(a)
            )
            for new, a in feeds
        ],
        [onnx.ValueInfoProto(name=name) for name, _, _ in outputs],
        [weights[name] for name in dict.fromkeys(node.input) if name in weights],
    )
    single_model = onnx.helper.make_model(graph, opset_imports=list(graph_model.opset_import))
    single_model.ir_version = graph_model.ir_version
    return OrtNode(
        single_model.SerializeToString(),
        tuple((new, np.asarray(a)) for new, a in feeds),
        outputs,
    )


def ort_kernels(
    model: nn.Module, inputs: Inputs, *, threads: int, replay_for: Any = None
) -> list[Kernel]:
    """The nodes ONNX Runtime runs for ``model`` (in eval mode already) on ``inputs``.

    Args:
        threads: Intra-op threads of the optimising session (as the table times).
        replay_for: ``replay_for(key) -> bool``: attach an :class:`OrtNode` to the first node of
            each key it accepts, so that it can be timed.
    """
    onnx = require("onnx", "the latency table's onnxruntime backend")
    graph_model, values = _optimised_graph(model, inputs, threads)
    weights = {w.name: w for w in graph_model.graph.initializer}
    kernels = []
    seen: set[str] = set()
    for index, node in enumerate(graph_model.graph.node):
        parts, elements, params, matrix = [], 0, 0, False
        for name in node.input:
            if not name:
                parts.append("-")
            elif name in weights:
                w = weights[name]
                dtype = onnx.helper.tensor_dtype_to_np_dtype(w.data_type)
                parts.append(f"w {_sig(tuple(w.dims), dtype)}")
                params += int(np.prod(w.dims, dtype=np.int64))
                matrix = matrix or len(w.dims) >= 2
            else:
                a = np.asarray(values[name])
                parts.append(_sig(a.shape, a.dtype))
                elements += a.size
        outs = []
        for name in node.output:
            if name:
                a = np.asarray(values[name])
                outs.append(_sig(a.shape, a.dtype))
                elements += a.size
        op = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        attrs = ", ".join(sorted(_attr(onnx, a) for a in node.attribute))
        key = f"{op}({attrs}) @ ({', '.join(parts)}) -> ({', '.join(outs)})"
        replay = None
        if replay_for is not None and key not in seen and replay_for(key):
            replay = _one_node_model(onnx, graph_model, node, weights, values)
        seen.add(key)
        kernels.append(
            Kernel(
                node.name or f"{op}:{index}",
                key,
                "node",
                int(elements),
                params,
                node.domain == NCHWC and node.op_type in REORDERS,
                matrix,
                replay=replay,
            )
        )
    return kernels


def ort_empty_kernel() -> Kernel:
    """An ``Identity`` node on one element: a session run's own cost, subtracted from each node."""
    onnx = require("onnx", "the latency table's onnxruntime backend")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["in0"], ["out0"])],
        "empty",
        [onnx.helper.make_tensor_value_info("in0", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("out0", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    node = OrtNode(
        model.SerializeToString(),
        (("in0", np.zeros(1, np.float32)),),
        (("out0", (1,), "float32"),),
    )
    return Kernel("(empty)", "(empty)", "node", 2, 0, replay=node)
