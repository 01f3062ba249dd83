"""taylor: per channel and layer, (sum of w * dL/dw)^2, averaged over batches."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import ConfigError
from torchslim.importance import Taylor


def test_taylor_on_a_tiny_linear_with_a_known_gradient(scored):
    """L = sum(W1 W0 x): dL/dW0[c, i] = s_c x_i and dL/dW1[j, c] = h_c with s_c = sum_j W1[j, c],
    h = W0 x; so both layers' sum of w * grad is s_c * sum_n h_nc."""
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    batches = [(torch.randn(5, 3), None) for _ in range(3)]
    w0, w1 = model[0].weight.detach().double(), model[1].weight.detach().double()
    s = w1.sum(0)
    per_batch = [(s * (x.double() @ w0.T).sum(0)) ** 2 for x, _ in batches]
    expected = torch.stack(per_batch).mean(0).numpy()

    def loss(outputs, targets):
        return outputs.sum()

    got = scored(Taylor(loss_fn=loss), model, batches[0][0], "0", batches)
    assert np.allclose(got, expected, rtol=1e-4)
    # a loss given to prepare (ts.prune_(..., loss_fn=...)) wins over the constructor's
    got = scored(Taylor(loss_fn=None), model, batches[0][0], "0", batches, loss_fn=loss)
    assert np.allclose(got, expected, rtol=1e-4)


def test_default_loss_is_cross_entropy_on_the_targets(scored):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
    batches = [(torch.randn(6, 3), torch.randint(0, 3, (6,))) for _ in range(2)]

    def ce(outputs, targets):
        return F.cross_entropy(outputs, targets)

    default = scored(Taylor(), model, batches[0][0], "0", batches)
    explicit = scored(Taylor(loss_fn=ce), model, batches[0][0], "0", batches)
    assert (
        np.allclose(default, explicit)
        and default.shape == (4,)
        and (default >= 0).all()
        and default.any()
    )


def test_default_loss_needs_targets(scored):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3))
    with pytest.raises(ConfigError, match="loss_fn"):
        scored(Taylor(), model, torch.randn(1, 3), "0", [torch.randn(2, 3)])
