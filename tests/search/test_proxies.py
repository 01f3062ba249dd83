"""Zero-cost proxies: values computed by hand on tiny networks, and prescreening."""

from __future__ import annotations

import math

import pytest
import torch
from _toy import ToySpace

from torchslim.errors import ConfigError, UnsupportedOpError
from torchslim.search import (
    get_proxy,
    grad_norm,
    list_proxies,
    naswot,
    prescreen,
    register_proxy,
    snip,
    synflow,
)


def _linear(weight):
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_the_registry():
    assert set(list_proxies()) >= {"synflow", "naswot", "grad_norm", "snip"}
    assert get_proxy("snip") is snip and get_proxy(len) is len
    with pytest.raises(ConfigError, match="unknown proxy 'x'; known: grad_norm, naswot"):
        get_proxy("x")
    with pytest.raises(ConfigError, match="already registered"):
        register_proxy("synflow")(len)


def test_synflow_of_a_linear_chain_is_twice_its_path_sum():
    # R = 1' |W2| |W1| 1, and for a chain sum(|W1| * dR/dW1) = sum(|W2| * dR/dW2) = R
    w1 = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]])
    w2 = torch.tensor([[2.0, -1.0], [0.5, 4.0], [1.0, 1.0]])
    net = torch.nn.Sequential(_linear(w1), _linear(w2))
    # |W1| 1 = [3.5, 5], 1' |W2| = [3.5, 6]: R = 3.5 * 3.5 + 6 * 5 = 42.25
    path_sum = (w2.abs() @ w1.abs()).sum().item()
    assert path_sum == pytest.approx(42.25)
    assert synflow(net, torch.randn(7, 3)) == pytest.approx(2 * path_sum)
    assert torch.equal(net[0].weight, w1)  # the model is left as it was


def test_synflow_ignores_biases_and_the_input_values():
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    assert synflow(net, torch.randn(1, 4)) == synflow(net, torch.full((3, 4), 9.0))


def test_naswot_on_a_hand_made_case():
    relu = torch.nn.Sequential(torch.nn.ReLU())
    # codes [1, 0] and [0, 1]: they agree on no unit, each agrees with itself on both: K = 2I
    assert naswot(relu, torch.tensor([[1.0, -1.0], [-1.0, 1.0]])) == pytest.approx(math.log(4))
    # codes [1,1,0], [1,0,0], [0,0,1]: K = [[3,2,0],[2,3,1],[0,1,3]], det = 27 - 3 - 12 = 12
    x = torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])
    assert naswot(relu, x) == pytest.approx(math.log(12))
    # two inputs with the same pattern: K is singular, the network cannot tell them apart
    assert naswot(relu, torch.tensor([[1.0, -1.0], [2.0, -3.0]])) == -math.inf


def test_naswot_sums_the_kernels_of_every_relu():
    net = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.ReLU())
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert naswot(net, x) == pytest.approx(math.log(16))  # K = 4I
    with pytest.raises(UnsupportedOpError, match="no nn.ReLU"):
        naswot(torch.nn.Sequential(torch.nn.Tanh()), x)


def test_grad_norm_and_snip_match_the_cross_entropy_gradient():
    w = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]])
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]])
    targets = torch.tensor([0, 1])
    p = torch.softmax(x @ w.T, dim=1)
    grad = (p - torch.nn.functional.one_hot(targets, 2)).T @ x / 2  # dL/dW, mean over batch
    net = _linear(w)
    assert grad_norm(net, x, targets) == pytest.approx(grad.norm().item(), rel=1e-6)
    assert snip(net, x, targets) == pytest.approx((w * grad).abs().sum().item(), rel=1e-6)


def test_snip_and_grad_norm_are_finite_and_grow_with_the_parameters():
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))

    def mlp(width):
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 3)
        )

    small, big = mlp(4), mlp(256)
    for proxy in (snip, grad_norm, synflow):
        s, b = proxy(small, x), proxy(big, x)
        assert math.isfinite(s) and math.isfinite(b) and 0 < s < b, proxy.__name__


def test_proxies_leave_the_model_and_its_batch_norm_statistics_unchanged():
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 3)
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 4)
    for name in list_proxies():
        get_proxy(name)(net, x)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.training and all(p.grad is None for p in net.parameters())


def test_prescreen_keeps_the_best_candidates_by_score():
    space = ToySpace(n=2)
    kept = prescreen(space, "synflow", n=10, keep=4, seed=0)
    assert len(kept) == 4
    scores = [c["score"] for c in kept]
    assert scores == sorted(scores, reverse=True)
    # synflow grows with the hidden width (4 + 8 x0): the kept candidates are wider
    everything = prescreen(space, "synflow", n=10, keep=10, seed=0)
    assert kept == everything[:4]

    def width(c):
        return 4 + int(8 * c["config"]["x"][0])

    assert sum(map(width, kept)) / 4 > sum(map(width, everything[4:])) / 6
    with pytest.raises(ConfigError, match="keep=5 is more than the n=3"):
        prescreen(space, "synflow", n=3, keep=5)
