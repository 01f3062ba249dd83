"""Network Slimming: bn_scale reads |gamma|; the sparsity penalty and its subgradient."""

import numpy as np
import torch
from torch import nn

import torchslim as ts
from torchslim.importance import L2, BNScale, bn_sparsity_grad_, bn_sparsity_penalty


def _model():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)
    )
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 0.1, 1.0]))
    return model, torch.randn(1, 1, 5, 5)


def test_bn_scale_is_abs_gamma(scored):
    model, x = _model()
    assert np.allclose(scored(BNScale(), model, x, "0"), [0.5, 2.0, 0.1, 1.0])


def test_bn_scale_falls_back_to_l2_without_a_norm(scored):
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 2, 1))
    x = torch.randn(1, 1, 2, 2)
    assert np.allclose(scored(BNScale(), model, x, "0"), scored(L2(), model, x, "0"))


def test_bn_scale_through_prune_removes_the_smallest_gammas(scored):
    model, x = _model()
    result = ts.prune_(model, x, ratio=0.5, importance="bn_scale")
    assert result.plan.kept["1.weight"] == {0: [1, 3]}
    assert model[1].weight.abs().tolist() == [2.0, 1.0]


def test_penalty_and_subgradient(scored):
    model, _ = _model()
    penalty = bn_sparsity_penalty(model, 0.1)
    assert torch.isclose(penalty, torch.tensor(0.1 * 3.6))
    penalty.backward()
    from_penalty = model[1].weight.grad.clone()
    model.zero_grad(set_to_none=True)
    bn_sparsity_grad_(model, 0.1)  # the same subgradient, added after backward
    assert torch.allclose(model[1].weight.grad, from_penalty)
    bn_sparsity_grad_(model, 0.1)  # adds to an existing gradient
    assert torch.allclose(model[1].weight.grad, 2 * from_penalty)
    assert model[0].weight.grad is None  # convolutions are not penalised
    assert bn_sparsity_penalty(nn.Linear(2, 2), 0.1).item() == 0.0
