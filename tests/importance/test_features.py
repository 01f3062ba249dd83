"""Feature-map criteria against hand-computed values: energy (nuclear norm), hrank (rank),
activation (mean |x|), on convolution and token outputs, and how producers combine."""

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.importance import Activation, Energy, HRank


def _conv_pair(w):
    """A 1x1 conv whose output channel c is sum_i w[c, i] * x_i, and a consumer conv."""
    w = torch.as_tensor(w, dtype=torch.float32)
    model = nn.Sequential(nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False), nn.Conv2d(len(w), 1, 1))
    with torch.no_grad():
        model[0].weight.copy_(w.view(*w.shape, 1, 1))
    return model


def test_energy_is_the_mean_nuclear_norm_of_each_channels_maps(scored):
    model = _conv_pair([[2.0], [-3.0], [0.5]])
    batches = [torch.randn(2, 1, 4, 5) for _ in range(3)]
    maps = np.concatenate([b[:, 0].numpy() for b in batches])  # 6 samples of 4x5
    nuclear = np.mean([np.linalg.svd(m, compute_uv=False).sum() for m in maps])
    got = scored(Energy(), model, batches[0][:1], "0", batches)
    assert np.allclose(got, np.abs([2.0, -3.0, 0.5]) * nuclear, rtol=1e-5)
    # the same as torch.linalg.svdvals on the real outputs
    with torch.no_grad():
        out = torch.cat([model[0](b) for b in batches])
    assert np.allclose(got, torch.linalg.svdvals(out).sum(-1).mean(0).numpy(), rtol=1e-5)


def test_hrank_counts_the_rank_of_rank_deficient_maps(scored):
    u, v = torch.randn(4, 1), torch.randn(1, 5)
    full = torch.randn(4, 5)  # rank 4
    x = torch.stack([full, u @ v]).unsqueeze(0).repeat(2, 1, 1, 1)  # 2 samples, 2 channels
    # out 0 = in 1 (rank 1), out 1 = in 0 + in 1 (rank 4), out 2 = 0 (rank 0), out 3 = 2 in 1
    model = _conv_pair([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 2.0]])
    assert np.allclose(scored(HRank(), model, x, "0", [x]), [1, 4, 0, 1])


def test_activation_is_the_mean_absolute_value(scored):
    model = _conv_pair([[1.0], [-2.0]])
    x = torch.randn(3, 1, 2, 2)
    expected = [x.abs().mean().item(), 2 * x.abs().mean().item()]
    assert np.allclose(scored(Activation(), model, x, "0", [(x, torch.zeros(3))]), expected)


def test_token_outputs_use_the_norm_over_positions(scored):
    """A linear layer on (N, T, C): each channel's map is the 1 x T row of its values."""
    model = nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2))
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        y = model[0](x)  # (2, 5, 3)
    assert np.allclose(scored(Energy(), model, x, "0", [x]), y.norm(dim=1).mean(0), rtol=1e-5)
    assert np.allclose(scored(HRank(), model, x, "0", [x]), [1, 1, 1])


def test_producers_of_a_group_combine_by_the_reduction(scored, traced):
    """conv -> batch norm: both outputs carry the channels; scores combine per ``reduction``."""
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 1, 1))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, 3.0, 0.2]))
    model.eval()
    x = torch.randn(4, 1, 6, 6)
    graph, group = traced(model, x[:1], "0")
    crit = Activation(reduction="sum")
    crit.prepare(graph, [x])
    per_module = crit.module_scores()
    assert set(per_module) == {"0", "1"}
    with torch.no_grad():
        conv, bn = model[0](x), model[1](model[0](x))
    assert np.allclose(per_module["0"], conv.abs().mean((0, 2, 3)), rtol=1e-5)
    assert np.allclose(per_module["1"], bn.abs().mean((0, 2, 3)), rtol=1e-5)
    assert np.allclose(crit(group), per_module["0"] + per_module["1"])
    for reduction, fn in [("mean", np.mean), ("max", np.max)]:
        crit = Activation(reduction=reduction)
        crit.prepare(graph, [x])
        assert np.allclose(crit(group), fn([per_module["0"], per_module["1"]], axis=0))
    crit = Activation(reduction="sum", normalize="max")
    crit.prepare(graph, [x])
    expected = per_module["0"] / per_module["0"].max() + per_module["1"] / per_module["1"].max()
    assert np.allclose(crit(group), expected)


def test_scoring_before_prepare_says_what_to_do(traced):
    model = _conv_pair([[1.0], [2.0]])
    _, group = traced(model, torch.randn(1, 1, 2, 2), "0")
    with pytest.raises(ConfigError, match="prepare"):
        Energy()(group)
