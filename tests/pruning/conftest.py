"""Shared fixtures of the pruning tests."""

import pytest

import torchslim as ts


def _prunable_params(model, x) -> int:
    """Parameters in tensors that some group can shrink."""
    graph = ts.trace(model, x)
    names = {m.tensor for g in graph.groups() for m in g.members}
    return sum(t.numel() for n, t in graph.tensors.items() if n in names and t.requires_grad)


@pytest.fixture
def prunable_params():
    """``prunable_params(model, inputs)``: parameters in tensors that some group can shrink (the
    zoo sweeps require pruning to remove at least 40% of them at ratio 0.5)."""
    return _prunable_params
