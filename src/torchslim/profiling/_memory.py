"""Peak memory of one forward pass.

On CUDA the figure is the caching allocator's own: ``torch.cuda.max_memory_allocated`` during the
pass, minus what was allocated before it, which includes kernel workspaces (cuDNN, cuBLAS).

On the CPU (and on the ``meta`` device) there is no allocator statistic, and process RSS mixes in
the Python heap, the allocator's caching and every other object, so we count what the model itself
makes live: a dispatch mode sees every tensor that every op returns, keys it by its storage, and a
weak reference tells when that storage is freed. The peak of the live bytes is the activation
peak; parameters, buffers and inputs are added as they stay live throughout. What this misses:
scratch memory that a kernel allocates and frees inside one op (oneDNN workspaces) and allocator
overhead, so it is a lower bound on what the process needs, and exactly reproducible.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from torchslim._inputs import Inputs

__all__ = ["Memory", "measure_memory"]


@dataclass(frozen=True)
class Memory:
    """Memory of one forward pass, in bytes.

    Attributes:
        peak_bytes: Parameters + buffers + inputs + ``activations_peak_bytes``.
        activations_peak_bytes: Peak of the memory the forward pass allocated on top of what was
            live before it (activations, outputs, workspaces where the method sees them).
        params_bytes, buffers_bytes, inputs_bytes: Static memory.
        method: ``"cuda_max_memory_allocated"`` or ``"live_tensor_tracking"`` (see module doc).
        device: Where the pass ran.
    """

    peak_bytes: int
    activations_peak_bytes: int
    params_bytes: int
    buffers_bytes: int
    inputs_bytes: int
    method: str
    device: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Memory:
        return cls(**data)


class _LiveTensorTracker(TorchDispatchMode):
    """Tracks the bytes of storages created by ops while the mode is active."""

    def __init__(self, known: list[torch.Tensor]) -> None:
        super().__init__()
        self._seen: set[int] = {t.untyped_storage()._cdata for t in known}
        self.live = 0
        self.peak = 0

    def _freed(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self._seen:
                continue  # a view, an in-place result, or a parameter/input
            self._seen.add(key)
            nbytes = storage.nbytes()
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key, nbytes)
        return out


def _nbytes(tensors: list[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


def measure_memory(model: torch.nn.Module, inputs: Inputs, device: torch.device) -> Memory:
    """Peak memory of one forward pass of ``model`` on ``inputs`` under inference mode."""
    params = [p.detach() for p in model.parameters()]
    buffers = [b for b in model.buffers()]
    tensors = inputs.tensors()
    params_bytes, buffers_bytes, inputs_bytes = _nbytes(params), _nbytes(buffers), _nbytes(tensors)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            out = inputs.call(model)
        torch.cuda.synchronize(device)
        activations = torch.cuda.max_memory_allocated(device) - before
        del out
        method = "cuda_max_memory_allocated"
    else:
        tracker = _LiveTensorTracker(params + buffers + tensors)
        with torch.inference_mode(), tracker:
            out = inputs.call(model)
        activations = tracker.peak
        del out
        method = "live_tensor_tracking"
    return Memory(
        peak_bytes=params_bytes + buffers_bytes + inputs_bytes + activations,
        activations_peak_bytes=activations,
        params_bytes=params_bytes,
        buffers_bytes=buffers_bytes,
        inputs_bytes=inputs_bytes,
        method=method,
        device=str(device),
    )
