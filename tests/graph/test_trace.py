"""Tracing and grouping: which dimensions are coupled, with exact index bookkeeping."""

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.errors import ConfigError, TracingError


def members(group):
    return {(m.tensor, m.dim) for m in group.members}


def test_conv_chain_groups_and_flatten_into_linear():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 10),
    )
    graph = ts.trace(model, torch.randn(1, 3, 5, 5))
    groups = graph.groups()
    assert [len(g) for g in groups] == [8, 4]
    first, second = groups
    assert members(first) == {
        ("0.weight", 0),
        ("0.bias", 0),
        ("1.weight", 0),
        ("1.bias", 0),
        ("1.running_mean", 0),
        ("1.running_var", 0),
        ("3.weight", 1),
    }
    assert members(second) == {("3.weight", 0), ("3.bias", 0), ("5.weight", 1)}
    # channel c of conv 3 is the 25 features c*25 .. c*25+24 of the flattened linear input
    k = [m.tensor for m in second.members].index("5.weight")
    for c in range(4):
        assert second.indices[c][k].tolist() == list(range(c * 25, c * 25 + 25))
    # the input image channels and the classifier's classes are never prunable
    assert not any(("0.weight", 1) in members(g) or ("5.weight", 0) in members(g) for g in groups)


def test_residual_add_couples_the_stream():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 1)
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            x = self.stem(x)
            return self.head(x + self.b(torch.relu(self.a(x))))

    graph = ts.trace(Block(), torch.randn(1, 3, 6, 6))
    stream = next(g for g in graph.groups() if ("stem.weight", 0) in members(g))
    assert {("b.weight", 0), ("a.weight", 1), ("head.weight", 1)} <= members(stream)
    inner = next(g for g in graph.groups() if ("a.weight", 0) in members(g))
    assert members(inner) == {("a.weight", 0), ("a.bias", 0), ("b.weight", 1)}


def test_depthwise_ties_input_and_output_channels():
    model = nn.Sequential(
        nn.Conv2d(3, 6, 1), nn.Conv2d(6, 12, 3, padding=1, groups=6), nn.Conv2d(12, 2, 1)
    )
    graph = ts.trace(model, torch.randn(1, 3, 4, 4))
    (group,) = [g for g in graph.groups() if ("0.weight", 0) in members(g)]
    assert len(group) == 6
    k = [(m.tensor, m.dim) for m in group.members].index(("1.weight", 0))
    # channel multiplier 2: input channel c feeds output channels 2c and 2c+1
    assert [ch[k].tolist() for ch in group.indices] == [[2 * c, 2 * c + 1] for c in range(6)]
    assert ("2.weight", 1) in members(group)


def test_concat_offsets_are_exact():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
            self.c = nn.Conv2d(10, 2, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    groups = ts.trace(Cat(), torch.randn(1, 3, 4, 4)).groups()
    gb = next(g for g in groups if ("b.weight", 0) in members(g))
    k = [(m.tensor, m.dim) for m in gb.members].index(("c.weight", 1))
    assert [ch[k].tolist() for ch in gb.indices] == [[4 + c] for c in range(6)]


def test_ops_without_rules_pin_their_channels():
    class Rolled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(torch.roll(self.a(x), 1, dims=1))  # mixes channels: cannot prune

    graph = ts.trace(Rolled(), torch.randn(1, 3, 4, 4))
    assert graph.groups() == []
    assert "aten.roll" in graph.unsupported
    assert "aten.roll" in str(graph)


def test_equal_chunks_lose_the_same_indices_and_unequal_splits_are_kept_whole():
    class Split(nn.Module):
        def __init__(self, sizes):
            super().__init__()
            self.sizes = sizes
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(sizes[0], 2, 1)
            self.c = nn.Conv2d(sizes[1], 2, 1)

        def forward(self, x):
            left, right = self.a(x).split(self.sizes, dim=1)
            return self.b(left) + self.c(right)

    groups = ts.trace(Split([4, 4]), torch.randn(1, 3, 4, 4)).groups()
    (group,) = [g for g in groups if ("a.weight", 0) in members(g)]
    a = group.members.index(next(m for m in group.members if m.tensor == "a.weight"))
    # channel i of the first half goes with channel i of the second
    assert sorted(tuple(ch[a].tolist()) for ch in group.indices) == [(i, i + 4) for i in range(4)]
    groups = ts.trace(Split([3, 5]), torch.randn(1, 3, 4, 4)).groups()
    assert not any(("a.weight", 0) in members(g) for g in groups)


def test_ignore_pins_modules_and_everything_coupled():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1))
    all_groups = ts.trace(model, torch.randn(1, 3, 2, 2)).groups()
    assert len(all_groups) == 2
    kept = ts.trace(model, torch.randn(1, 3, 2, 2), ignore=["re:[2]"]).groups()
    assert kept == []  # conv 2 takes the first group's channels and makes the second's


def test_tracing_leaves_the_model_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5))
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ts.trace(model, torch.randn(2, 3, 4, 4))
    assert model.training and model[1].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # running statistics were not updated


def test_group_prints_a_table_of_members():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1))
    (group,) = ts.trace(model, torch.randn(1, 3, 2, 2)).groups()
    text = str(group)
    assert text.startswith("Group of 8 channels")
    for name in ("0.weight", "1.running_var", "2.weight"):
        assert name in text
    assert "BatchNorm2d" in text


def test_failing_model_is_a_tracing_error():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(TracingError, match="boom"):
        ts.trace(Broken(), torch.randn(1))


def test_low_level_prune_by_hand_and_stale_graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 2, 1))
    original = [p.detach().clone() for p in model.parameters()]
    graph = ts.trace(model, torch.randn(1, 3, 2, 2))
    (group,) = graph.groups()
    plan = group.prune([1, 4])
    assert model[0].weight.shape == (4, 3, 1, 1) and model[0].out_channels == 4
    assert model[2].weight.shape == (2, 4, 1, 1) and model[2].in_channels == 4
    assert torch.equal(model[0].weight, original[0][[0, 2, 3, 5]])
    assert torch.equal(model[2].weight, original[2][:, [0, 2, 3, 5]])
    assert plan.kept["0.weight"] == {0: [0, 2, 3, 5]}
    with pytest.raises(ConfigError, match="trace"):
        group.prune([0])


def test_channels_last_pooling_keeps_channels_prunable():
    # adaptive pooling to 1x1 of a channels-last tensor restrides its output in place
    # (aten.as_strided_): a layout change only, so the channels stay prunable
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8, 2)

        def forward(self, x):
            x = self.conv(x).contiguous(memory_format=torch.channels_last)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    graph = ts.trace(Pool(), torch.randn(1, 3, 4, 4))
    assert [len(g) for g in graph.groups()] == [8]
    assert not graph.unsupported
