"""MACs and parameter counts against values worked out by hand."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from torchslim._inputs import as_inputs
from torchslim.profiling import count_macs, count_params


def test_conv_and_linear_macs_match_the_formula():
    # conv: out_channels * in_channels * k*k * H_out * W_out; linear: batch * in * out
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 5))
    macs, layers = count_macs(model, as_inputs(torch.randn(2, 3, 16, 16)))
    conv = 2 * 8 * 3 * 9 * 16 * 16
    linear = 2 * 8 * 16 * 16 * 5
    assert macs == conv + linear
    by_name = {row.name: row for row in layers}
    assert by_name["0"].macs == conv
    assert by_name["2"].macs == linear
    assert by_name["0"].params == 8 * 3 * 9 + 8
    assert by_name["2"].share == pytest.approx(linear / (conv + linear))
    assert "1" not in by_name  # Flatten: no params, no MACs


def test_grouped_and_depthwise_conv_macs():
    model = nn.Conv2d(16, 32, 3, padding=1, groups=4)
    macs, _ = count_macs(model, as_inputs(torch.randn(1, 16, 8, 8)))
    assert macs == 32 * (16 // 4) * 9 * 8 * 8
    depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
    macs, _ = count_macs(depthwise, as_inputs(torch.randn(1, 16, 8, 8)))
    assert macs == 16 * 9 * 8 * 8


class MatmulWithChild(nn.Module):
    """Runs a matmul in its own forward and a child Linear: self vs child accounting."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4))
        self.proj = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.proj(x @ self.weight.T @ self.weight)  # two matmuls here, one in the child


def test_self_macs_exclude_children_and_sum_to_total():
    model = nn.Sequential(MatmulWithChild())
    macs, layers = count_macs(model, as_inputs(torch.randn(5, 4)))
    by_name = {row.name: row for row in layers}
    own = 5 * 4 * 6 + 5 * 6 * 4
    assert by_name["0"].macs == own
    assert by_name["0"].params == 24  # only its own parameter, not the child's
    assert by_name["0.proj"].macs == 5 * 4 * 3
    assert macs == own + 5 * 4 * 3
    assert sum(row.macs for row in layers) == macs


def test_module_called_twice_counts_both_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.fc(x))

    macs, layers = count_macs(Twice(), as_inputs(torch.randn(3, 8)))
    row = next(r for r in layers if r.name == "fc")
    assert row.calls == 2
    assert row.macs == macs == 2 * 3 * 8 * 8


def test_total_equals_pytorch_flop_counter_halved():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(1, 3, 10, 10)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    macs, _ = count_macs(model, as_inputs(x))
    assert macs == counter.get_total_flops() // 2


def test_meta_device_counts_the_same_as_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8))
    x = torch.randn(2, 3, 12, 12)
    cpu = count_macs(model, as_inputs(x))
    meta = count_macs(model.to("meta"), as_inputs(x.to("meta")))
    assert cpu == meta


def test_param_counts_dedupe_tied_weights_and_split_trainable():
    embed = nn.Embedding(100, 16)
    head = nn.Linear(16, 100, bias=False)
    head.weight = embed.weight  # tied
    model = nn.Sequential(embed, nn.Linear(16, 16), head)
    model[1].bias.requires_grad_(False)
    total, trainable = count_params(model)
    assert total == 100 * 16 + 16 * 16 + 16
    assert trainable == total - 16


def _transformer():
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()


@pytest.mark.parametrize("grad", [False, True])
def test_attention_counts_the_same_on_cpu_and_meta(grad):
    # On real CPU tensors, nn.MultiheadAttention's inference fast path and SDPA's CPU flash kernel
    # would hide the attention MACs from the counter; the count must not depend on the device.
    model = _transformer()
    x = torch.randn(2, 10, 32)
    with torch.set_grad_enabled(grad):
        cpu, _ = count_macs(model, as_inputs(x))
        meta, _ = count_macs(model.to("meta"), as_inputs(x.to("meta")))
    # per layer: q, k, v, out projections 4*d*d, scores and weighted sum 2*n*d, MLP 2*d*ff
    per_sample_layer = 10 * (4 * 32 * 32 + 2 * 32 * 64) + 2 * 10 * 10 * 32
    assert cpu == meta == 2 * 2 * per_sample_layer
    assert torch.backends.mha.get_fastpath_enabled()  # restored
