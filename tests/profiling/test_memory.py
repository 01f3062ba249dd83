"""Peak memory: exact live-tensor accounting on CPU and meta."""

import pytest
import torch
from torch import nn

from torchslim._inputs import as_inputs
from torchslim.profiling import measure_memory


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_mlp_activation_peak_is_exact(device):
    # Linear(1000->2000) output (4x2000 fp32 = 32,000 B) and the ReLU output are both live at the
    # ReLU; then the first is freed before Linear(2000->10) runs: peak 64,000 B.
    model = nn.Sequential(nn.Linear(1000, 2000), nn.ReLU(), nn.Linear(2000, 10)).to(device)
    memory = measure_memory(
        model, as_inputs(torch.randn(4, 1000, device=device)), torch.device(device)
    )
    assert memory.activations_peak_bytes == 64_000
    assert memory.params_bytes == (1000 * 2000 + 2000 + 2000 * 10 + 10) * 4
    assert memory.inputs_bytes == 4 * 1000 * 4
    assert memory.peak_bytes == memory.params_bytes + memory.inputs_bytes + 64_000
    assert memory.method == "live_tensor_tracking"


def test_inplace_ops_allocate_nothing_new():
    # with an in-place ReLU, the peak is the first output plus the 4x10 logits: 32,000 + 160 B
    model = nn.Sequential(nn.Linear(1000, 2000), nn.ReLU(inplace=True), nn.Linear(2000, 10))
    memory = measure_memory(model, as_inputs(torch.randn(4, 1000)), torch.device("cpu"))
    assert memory.activations_peak_bytes == 32_160


def test_buffers_and_dict_round_trip():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    memory = measure_memory(model, as_inputs(torch.randn(1, 3, 8, 8)), torch.device("cpu"))
    assert memory.buffers_bytes == 8 * 4 * 2 + 8  # running mean/var fp32, num_batches_tracked int64
    assert type(memory).from_dict(memory.to_dict()) == memory
