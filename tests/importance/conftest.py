"""Shared helpers of the importance tests."""

import numpy as np
import pytest
import torch

import torchslim as ts


def group_of(model, x, module):
    """The traced group whose members include ``module``'s weight dimension 0."""
    graph = ts.trace(model, x)
    for g in graph.groups():
        if any(m.module == module and m.dim == 0 for m in g.members):
            return graph, g
    raise AssertionError(f"no group produced by {module}")


def scores(criterion, model, x, module, calibration=None, **kwargs):
    graph, group = group_of(model, x, module)
    criterion.prepare(graph, calibration, **kwargs)
    return np.asarray(criterion(group))


@pytest.fixture
def scored():
    """``scored(criterion, model, x, module, calibration=None, **prepare_kwargs)``: the scores of
    the group produced by ``module``, after ``criterion.prepare``."""
    return scores


@pytest.fixture
def traced():
    """``traced(model, x, module)``: the graph and the group produced by ``module``."""
    return group_of


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
