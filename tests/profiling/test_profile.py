"""ts.profile end to end, across the built-in zoo."""

import json

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.errors import ConfigError
from torchslim.models import get_zoo_model, list_zoo
from torchslim.profiling import count_params


@pytest.mark.parametrize("name", list_zoo())
def test_profile_every_zoo_model(name):
    entry = get_zoo_model(name)
    torch.manual_seed(0)
    model = entry.build()
    inputs = entry.example_inputs(2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    result = ts.profile(model, inputs, warmup=1, runs=3)

    total, trainable = count_params(model)
    assert (result.params, result.trainable_params) == (total, trainable)
    assert result.macs > 0
    # every MAC is attributed to exactly one module (the root's own ops included)
    assert sum(row.macs for row in result.layers) == result.macs
    assert sum(row.share for row in result.layers) == pytest.approx(1.0)
    assert result.latency is not None and result.latency.runs == 3
    assert result.latency.batch_size == 2
    assert result.memory is not None and result.memory.params_bytes >= 4 * total
    # the model is left exactly as it was: weights, and train mode
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    # results are data
    data = json.loads(json.dumps(result.to_dict()))
    assert ts.Profile.from_dict(data) == result
    text = str(result)
    assert type(model).__name__ in text and "MACs" in text and "latency" in text


def test_dict_inputs_and_input_shapes():
    entry = get_zoo_model("dict_io")
    result = ts.profile(entry.build(), entry.example_inputs(3), latency=False)
    assert result.latency is None
    assert set(result.input_shapes) == {"input_ids", "attention_mask"}
    assert result.input_shapes["input_ids"][0] == 3


def test_meta_device_profiles_a_copy_and_leaves_the_model_on_cpu():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 10, 10)
    on_cpu = ts.profile(model, x, latency=False)
    on_meta = ts.profile(model, x, latency=False, device="meta")
    assert on_meta.device == "meta"
    assert next(model.parameters()).device.type == "cpu"
    assert (on_meta.macs, on_meta.params) == (on_cpu.macs, on_cpu.params)
    assert on_meta.memory == type(on_cpu.memory)(**{**on_cpu.memory.to_dict(), "device": "meta"})
    with pytest.raises(ConfigError, match="meta device"):
        ts.profile(model, x, device="meta")


def test_threads_are_pinned_reported_and_restored():
    before = torch.get_num_threads()
    result = ts.profile(nn.Linear(8, 8), torch.randn(1, 8), threads=1, runs=2)
    assert result.threads == 1 and result.latency.threads == 1
    assert torch.get_num_threads() == before


def test_table_sorting_and_truncation():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 64), nn.Linear(64, 2))
    result = ts.profile(model, torch.randn(1, 4), latency=False)
    lines = result.table(top=1, sort="macs").splitlines()
    assert lines[2].split()[0] == "1"  # Linear(4, 64): 256 MACs, the heaviest
    assert "2 more modules" in lines[-1]
    with pytest.raises(ConfigError, match="sort must be"):
        result.table(sort="speed")


@pytest.mark.parametrize("bad", [None, 3, "x", ()])
def test_bad_example_inputs_name_the_problem(bad):
    with pytest.raises(ConfigError, match="example_inputs|hold no tensor"):
        ts.profile(nn.Identity(), bad)


def test_human_formatting():
    assert ts.profiling.human(25_557_032) == "25.56 M"
    assert ts.profiling.human(4_089_184_256) == "4.09 G"
    assert ts.profiling.human(999) == "999"


def test_a_parameter_passed_to_a_module_is_counted():
    class Tokens(torch.nn.Module):  # timm's PiT and CaiT pass their class token to a module
        def __init__(self):
            super().__init__()
            self.token = torch.nn.Parameter(torch.randn(1, 1, 8))
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.proj(x) + self.proj(self.token)

    p = ts.profile(Tokens(), torch.randn(2, 3, 8), latency=False, memory=False)
    assert p.macs == 2 * 3 * 8 * 8 + 8 * 8
