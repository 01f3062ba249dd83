"""Build models without allocating their weights, for counting MACs and parameters of any size."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

__all__ = ["meta_init", "build_on_meta"]

M = TypeVar("M", bound=torch.nn.Module)


@contextlib.contextmanager
def meta_init() -> Iterator[None]:
    """Within the block, every parameter and buffer a module registers is moved to ``meta``.

    Unlike ``with torch.device("meta")`` it lets constructors compute with ordinary tensors (RegNet
    derives its widths with tensor maths), at the price of briefly allocating (not initialising)
    each weight before it is moved.
    """
    register_parameter = torch.nn.Module.register_parameter
    register_buffer = torch.nn.Module.register_buffer

    def on_meta_parameter(self, name, param):  # noqa: ANN001
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def on_meta_buffer(self, name, tensor, persistent=True):  # noqa: ANN001
        if tensor is not None:
            tensor = tensor.to("meta")
        register_buffer(self, name, tensor, persistent=persistent)

    torch.nn.Module.register_parameter = on_meta_parameter
    torch.nn.Module.register_buffer = on_meta_buffer
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register_parameter
        torch.nn.Module.register_buffer = register_buffer


def build_on_meta(factory: Callable[[], M]) -> M:
    """Call ``factory`` with weights on the ``meta`` device: no memory, no initialisation cost.

    Tries ``torch.device("meta")`` first (fastest) and falls back to :func:`meta_init` for
    constructors that compute with tensors.
    """
    try:
        with torch.device("meta"):
            return factory()
    except (NotImplementedError, RuntimeError):
        with meta_init():
            return factory().to("meta")
