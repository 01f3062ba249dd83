"""Make attention observable: run it op by op instead of through its fused inference fast path."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["attention_op_by_op"]


@contextlib.contextmanager
def attention_op_by_op() -> Iterator[None]:
    """Route ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` through their op-by-op
    path. Their inference fast path is one fused kernel: no counter sees its MACs and no tracer sees
    how it couples channels. Restores the previous setting on exit."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
