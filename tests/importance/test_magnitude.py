"""Weight criteria against hand-computed scores: l1/l2 (unchanged default), fpgm, lamp."""

import numpy as np
import torch
from torch import nn

from torchslim.importance import FPGM, L1, L2, LAMP, Magnitude


def _pair(w0, w1):
    """conv0 (4 filters) -> conv1: the group of conv0's output channels has both weights."""
    model = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.Conv2d(4, 3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(w0, dtype=torch.float32).view(4, 2, 1, 1))
        model[1].weight.copy_(torch.as_tensor(w1, dtype=torch.float32).view(3, 4, 1, 1))
    return model, torch.randn(1, 2, 3, 3)


W0 = [[3.0, 4.0], [0.0, 1.0], [1.0, 1.0], [-2.0, 0.0]]
W1 = np.arange(12.0).reshape(3, 4) - 5


def test_l1_l2_sum_over_layers_by_default(scored):
    model, x = _pair(W0, W1)
    w0, w1 = np.array(W0), np.array(W1)
    l1 = np.abs(w0).sum(1) + np.abs(w1).sum(0)
    l2 = np.sqrt((w0**2).sum(1) + (w1**2).sum(0))
    assert np.allclose(scored(L1(), model, x, "0"), l1)
    assert np.allclose(scored(L2(), model, x, "0"), l2)
    assert np.allclose(scored(Magnitude(p=2), model, x, "0"), l2)
    per_layer = np.maximum((w0**2).sum(1), (w1**2).sum(0))
    assert np.allclose(scored(L2(reduction="max"), model, x, "0"), np.sqrt(per_layer))


def test_fpgm_sums_distances_to_the_other_filters_of_the_layer(scored):
    model, x = _pair(W0, W1)
    w = np.array(W0)
    expected = np.linalg.norm(w[:, None] - w[None], axis=-1).sum(1)
    # only conv0's filters (output dim) count: conv1's columns are not filters of this group
    assert np.allclose(scored(FPGM(), model, x, "0"), expected, rtol=1e-5)


def test_lamp_normalises_each_layer_by_the_larger_channels(scored):
    model, x = _pair(W0, W1)
    s0 = (np.array(W0) ** 2).sum(1)  # 25, 1, 2, 4
    lamp0 = np.array([25 / 25, 1 / 32, 2 / 31, 4 / 29])
    s1 = (np.array(W1) ** 2).sum(0)
    order = np.argsort(s1)
    lamp1 = np.empty(4)
    for i, c in enumerate(order):
        lamp1[c] = s1[c] / s1[order[i:]].sum()
    assert np.allclose(s0, [25, 1, 2, 4])
    got = scored(LAMP(reduction="sum"), model, x, "0")
    assert np.allclose(got, lamp0 + lamp1)
    assert np.allclose(scored(LAMP(reduction="max"), model, x, "0"), np.maximum(lamp0, lamp1))
