"""``ts.profile``: params, MACs, latency and memory of a model on given inputs, per layer."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

import torchslim
from torchslim._inputs import Inputs, as_inputs, eval_mode
from torchslim.errors import ConfigError
from torchslim.profiling._counting import LayerProfile, count_macs, count_params
from torchslim.profiling._latency import (
    Latency,
    LatencyBackend,
    measure_latency,
    pinned_threads,
)
from torchslim.profiling._memory import Memory, measure_memory

__all__ = ["Profile", "profile", "human"]

_logger = logging.getLogger(__name__)


def human(n: float, unit: str = "") -> str:
    """``25557032 -> '25.56 M'``: three significant decimals with an SI prefix."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}".rstrip() if float(n).is_integer() else f"{n:.2f} {unit}".rstrip()


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


@dataclass(frozen=True)
class Profile:
    """What :func:`profile` measured. Data only: ``to_dict``/``from_dict`` round-trip through JSON.

    Attributes:
        model: Class name of the profiled model.
        params, trainable_params: Parameter counts (shared parameters count once).
        macs: Multiply-accumulates of one forward pass on the example inputs.
        layers: Per-module table (see :class:`LayerProfile`).
        latency: Latency result, or ``None`` when not measured.
        memory: Peak memory of one forward pass, or ``None`` when not measured.
        input_shapes: Shape of each input tensor, keyed by position or keyword.
        device: Device the model ran on.
        threads: CPU intra-op threads in force.
        versions: ``torch`` and ``torchslim`` versions that measured it.
    """

    model: str
    params: int
    trainable_params: int
    macs: int
    layers: tuple[LayerProfile, ...]
    latency: Latency | None
    memory: Memory | None
    input_shapes: dict[str, list[int]]
    device: str
    threads: int
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "model": self.model,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "macs": self.macs,
            "layers": [layer.to_dict() for layer in self.layers],
            "latency": self.latency.to_dict() if self.latency else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "device": self.device,
            "threads": self.threads,
            "versions": dict(self.versions),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """Inverse of :meth:`to_dict`."""
        return cls(
            model=data["model"],
            params=data["params"],
            trainable_params=data["trainable_params"],
            macs=data["macs"],
            layers=tuple(LayerProfile(**row) for row in data["layers"]),
            latency=Latency.from_dict(data["latency"]) if data.get("latency") else None,
            memory=Memory.from_dict(data["memory"]) if data.get("memory") else None,
            input_shapes=dict(data["input_shapes"]),
            device=data["device"],
            threads=data["threads"],
            versions=dict(data.get("versions", {})),
        )

    def summary(self) -> str:
        """The headline lines: params, MACs, latency and memory."""
        shapes = ", ".join(f"{k}: {'x'.join(map(str, v))}" for k, v in self.input_shapes.items())
        lines = [
            f"{self.model} on {self.device} ({self.threads} threads), inputs {shapes}",
            f"params   {human(self.params)} ({self.params:,}; trainable {self.trainable_params:,})",
            f"MACs     {human(self.macs)} ({self.macs:,})",
        ]
        if self.latency is not None:
            lines.append(f"latency  {self.latency}")
        if self.memory is not None:
            m = self.memory
            lines.append(
                f"memory   peak {_mib(m.peak_bytes)} (params {_mib(m.params_bytes)}, buffers "
                f"{_mib(m.buffers_bytes)}, inputs {_mib(m.inputs_bytes)}, activations "
                f"{_mib(m.activations_peak_bytes)}; {m.method})"
            )
        return "\n".join(lines)

    def table(self, top: int | None = None, sort: str = "order") -> str:
        """The per-module table as text.

        Args:
            top: Show only this many rows (after sorting); ``None`` shows all.
            sort: ``"order"`` (execution order), ``"macs"`` or ``"params"`` (largest first).
        """
        if sort not in ("order", "macs", "params"):
            raise ConfigError(f"sort must be 'order', 'macs' or 'params', got {sort!r}")
        rows = list(self.layers)
        if sort != "order":
            rows.sort(key=lambda r: getattr(r, sort), reverse=True)
        hidden = len(rows) - top if top is not None and top < len(rows) else 0
        if top is not None:
            rows = rows[:top]
        header = ("module", "type", "params", "MACs", "share", "calls")
        body = [
            (
                r.name or "(root)",
                r.type,
                human(r.params),
                human(r.macs),
                f"{r.share:6.1%}",
                str(r.calls),
            )
            for r in rows
        ]
        widths = [
            max(len(h), *(len(b[i]) for b in body)) if body else len(h)
            for i, h in enumerate(header)
        ]
        align = ("<", "<", ">", ">", ">", ">")

        def fmt(cells: tuple[str, ...]) -> str:
            return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True))

        lines = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)]
        if hidden:
            lines.append(f"... {hidden} more modules (sorted by {sort})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.summary()}\n\n{self.table()}"


def _model_device(model: torch.nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def profile(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    latency: bool = True,
    memory: bool = True,
    backend: str | LatencyBackend = "eager",
    device: torch.device | str | None = None,
    threads: int | None = None,
    warmup: int = 10,
    runs: int = 50,
    _counted: tuple[int, list] | None = None,
) -> Profile:
    """Measure a model on example inputs: params, MACs, latency and peak memory, per layer.

    The model runs in eval mode (its train/eval flags are restored afterwards) and is not modified.
    MACs are counted on the real forward pass with PyTorch's ``FlopCounterMode``; on the ``meta``
    device everything but latency is measured without computing or allocating anything.

    Args:
        model: The model.
        example_inputs: A tensor, a tuple of tensors, or a dict of keyword inputs.
        latency: Measure latency (``False`` skips it, and ``Profile.latency`` is ``None``).
        memory: Measure the peak memory of one forward pass.
        backend: Latency backend name (see :func:`list_latency_backends`) or instance.
        device: Where to run. ``None`` uses the model's device. When the model lives elsewhere it
            is copied there, so the caller's model is never moved.
        threads: Pin PyTorch's CPU thread count while measuring (default: current setting).
        warmup: Untimed runs before timing.
        runs: Timed runs.

    Returns:
        A :class:`Profile`.
    """
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs: Inputs = as_inputs(example_inputs)
    current = _model_device(model) or inputs.device or torch.device("cpu")
    target = torch.device(device) if device is not None else current
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    if target != current:
        _logger.info("profiling a copy of the model on %s (the model stays on %s)", target, current)
        model = copy.deepcopy(model).to(target)
    inputs = inputs.to(target)
    if latency and target.type == "meta":
        raise ConfigError(
            "latency cannot be measured on the meta device (nothing runs there); "
            "pass latency=False or a real device"
        )

    with eval_mode(model), pinned_threads(threads) as n_threads:
        params, trainable = count_params(model)
        if _counted is not None and target == current:  # counted during another forward pass
            macs, layers = _counted
        else:
            with torch.no_grad():
                macs, layers = count_macs(model, inputs)
        mem = measure_memory(model, inputs, target) if memory else None
        lat = (
            measure_latency(
                model,
                inputs,
                backend=backend,
                device=target,
                threads=n_threads,
                warmup=warmup,
                runs=runs,
            )
            if latency
            else None
        )

    return Profile(
        model=type(model).__name__,
        params=params,
        trainable_params=trainable,
        macs=macs,
        layers=tuple(layers),
        latency=lat,
        memory=mem,
        input_shapes=inputs.shapes(),
        device=str(target),
        threads=n_threads,
        versions={"torch": torch.__version__, "torchslim": torchslim.__version__},
    )
