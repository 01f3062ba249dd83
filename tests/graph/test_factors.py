"""Reshapes that split channels into heads or groups: whole heads, head dims, channel shuffle,
nn.MultiheadAttention, and the size attributes that follow."""

import copy

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.errors import ConfigError
from torchslim.testing import outputs_close, zero_removed


class Attention(nn.Module):
    """timm-style attention: ``num_heads``, ``head_dim`` and ``attn_dim`` size its reshapes; the
    inner width (heads x head_dim) differs from the model width."""

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attn_dim = num_heads * head_dim
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.attn_dim))


class Block(nn.Module):
    def __init__(self, attention: nn.Module | None = None) -> None:
        super().__init__()
        self.inp = nn.Linear(12, 24)
        self.attn = attention or Attention(24, num_heads=4, head_dim=8)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.attn(h)
        return self.head(h.mean(dim=1))


def members(group):
    return {(m.tensor, m.dim) for m in group.members}


def _prune_and_check_oracle(model, x, **options):
    original = copy.deepcopy(model)
    result = ts.prune_(model, x, ratio=0.5, **options)
    with torch.no_grad():
        assert outputs_close(model(x), zero_removed(original, result.plan)(x))
    return result


def test_whole_heads_are_removed_and_num_heads_follows():
    torch.manual_seed(0)
    model, x = Block(), torch.randn(2, 7, 12)
    graph = ts.trace(model, x)
    heads = [g for g in graph.groups() if len(g) == 4]
    (group,) = heads
    qkv = next(k for k, m in enumerate(group.members) if m.tensor == "attn.qkv.weight")
    # head h is rows h*8..h*8+7 of each of q, k and v
    assert sorted(group.indices[1][qkv].tolist()) == [
        s * 32 + 8 + d for s in range(3) for d in range(8)
    ]
    result = _prune_and_check_oracle(model, x)
    assert model.attn.num_heads == 2 and model.attn.head_dim == 8 and model.attn.attn_dim == 16
    assert result.plan.attributes["attn"] == {"num_heads": [4, 2], "attn_dim": [32, 16]}
    assert model.attn.qkv.weight.shape == (48, 12)
    assert model.attn.proj.weight.shape == (12, 16)


def test_head_dims_are_removed_from_every_head():
    torch.manual_seed(0)
    model, x = Block(), torch.randn(2, 7, 12)
    result = _prune_and_check_oracle(model, x, attention="head_dim")
    assert (model.attn.num_heads, model.attn.head_dim, model.attn.attn_dim) == (4, 4, 16)
    assert result.plan.attributes["attn"] == {"head_dim": [8, 4], "attn_dim": [32, 16]}


def test_attention_option_is_checked():
    with pytest.raises(ConfigError, match="attention"):
        ts.trace(Block(), torch.randn(1, 3, 12), attention="rows")


def test_plan_with_attributes_replays_on_a_fresh_model(tmp_path):
    torch.manual_seed(0)
    model, x = Block(), torch.randn(2, 7, 12)
    torch.manual_seed(1)
    fresh = Block()
    fresh.load_state_dict(model.state_dict())
    result = ts.prune_(model, x, ratio=0.5)
    plan = ts.PruningPlan.from_json(result.plan.to_json())
    assert plan.attributes == result.plan.attributes
    ts.apply_plan(fresh, plan)
    assert fresh.attn.num_heads == 2
    with torch.no_grad():
        assert outputs_close(fresh(x), model(x), rtol=0, atol=0)
    ts.save(model, tmp_path / "m", plan=result.plan, source=f"{__file__}:Block")
    loaded = ts.load(tmp_path / "m")
    with torch.no_grad():
        assert outputs_close(loaded(x), model(x), rtol=0, atol=0)
    # the attribute check: a plan does not fit a model whose attribute differs
    other = Block(Attention(24, num_heads=2, head_dim=16))
    with pytest.raises(ts.errors.PruningError):
        ts.apply_plan(other, plan)


class MHABlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(20, 24)
        self.attn = nn.MultiheadAttention(24, 4, batch_first=True)  # head_dim 6
        self.head = nn.Linear(24, 3)

    def forward(self, ids):
        x = self.tok(ids)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(x.mean(dim=1))


def test_multihead_attention_loses_whole_heads_with_its_embedding_width():
    torch.manual_seed(0)
    model, ids = MHABlock().eval(), torch.randint(0, 20, (2, 6))
    _prune_and_check_oracle(model, ids)
    attn = model.attn
    assert (attn.num_heads, attn.embed_dim, attn.head_dim) == (2, 12, 6)
    assert attn.in_proj_weight.shape == (36, 12) and attn.out_proj.weight.shape == (12, 12)


def test_multihead_attention_head_dims():
    torch.manual_seed(0)
    model, ids = MHABlock().eval(), torch.randint(0, 20, (2, 6))
    ts.prune_(model, ids, ratio=0.5, attention="head_dim")
    attn = model.attn
    assert (attn.num_heads, attn.embed_dim, attn.head_dim) == (4, 12, 3)
    with torch.no_grad():
        assert model(ids).shape == (2, 3)


def channel_shuffle(x, groups):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def test_channel_shuffle_removes_the_same_channel_of_every_group():
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(channel_shuffle(self.a(x), 2))

    model, x = Shuffle(), torch.randn(1, 3, 4, 4)
    (group,) = ts.trace(model, x).groups()
    a = [m.tensor for m in group.members].index("a.weight")
    b = [m.tensor for m in group.members].index("b.weight")
    pairs = sorted((tuple(ch[a].tolist()), tuple(ch[b].tolist())) for ch in group.indices)
    # channel i of each half of a's output lands at 2i and 2i+1 after the shuffle
    assert pairs == [((i, i + 4), (2 * i, 2 * i + 1)) for i in range(4)]
    _prune_and_check_oracle(model, x)
    assert model.a.out_channels == 4 and model.b.in_channels == 4


def test_heads_sized_from_the_input_width_are_tied_to_it():
    class WidthSized(nn.Module):  # torchvision Swin style: head_dim = c // heads
        def __init__(self):
            super().__init__()
            self.heads = 4
            self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            out = (q @ k.transpose(-2, -1)).softmax(-1) @ v
            return self.proj(out.transpose(1, 2).reshape(b, n, c))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.attn, self.head = nn.Linear(12, 16), WidthSized(), nn.Linear(16, 5)

        def forward(self, x):
            h = self.inp(x)
            return self.head((h + self.attn(h)).mean(1))

    torch.manual_seed(0)
    model, x = Net(), torch.randn(2, 5, 12)
    groups = ts.trace(model, x).groups()
    (group,) = [g for g in groups if ("attn.qkv.weight", 0) in members(g)]
    assert ("inp.weight", 0) in members(group)
    assert len(group) == 4  # whole heads, each with its 4 model-width channels
    _prune_and_check_oracle(model, x)
    assert model.attn.heads == 2 and model.inp.out_features == 8


def test_grouped_convolution_loses_the_same_positions_in_every_group():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.g = nn.Conv2d(8, 12, 3, padding=1, groups=2)  # 4 in, 6 out per group
            self.b = nn.Conv2d(12, 5, 1)

        def forward(self, x):
            return self.b(torch.relu(self.g(torch.relu(self.a(x)))))

    torch.manual_seed(0)
    model, x = Grouped(), torch.randn(1, 3, 6, 6)
    groups = ts.trace(model, x).groups()
    inner = next(g for g in groups if ("a.weight", 0) in members(g))
    a = [m.tensor for m in inner.members].index("a.weight")
    g_in = [(m.tensor, m.dim) for m in inner.members].index(("g.weight", 1))
    assert sorted((tuple(ch[a].tolist()), tuple(ch[g_in].tolist())) for ch in inner.indices) == [
        ((i, i + 4), (i,)) for i in range(4)
    ]
    outer = next(g for g in groups if ("g.weight", 0) in members(g))
    assert len(outer) == 6
    _prune_and_check_oracle(model, x)
    assert (model.g.in_channels, model.g.out_channels, model.g.groups) == (4, 6, 2)
    assert model.g.weight.shape == (6, 2, 3, 3)


def test_group_norm_loses_the_same_positions_in_every_group():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 4, 4)
    (group,) = ts.trace(model, x).groups()
    k = [(m.tensor, m.dim) for m in group.members].index(("1.weight", 0))
    assert sorted(tuple(ch[k].tolist()) for ch in group.indices) == [(i, i + 4) for i in range(4)]
    ts.prune_(model, x, ratio=0.5)
    assert (model[1].num_groups, model[1].num_channels) == (2, 4)
    assert model(x).shape == (1, 4, 4, 4)


def test_shape_tuple_attributes_follow_pruning():
    class Scale(nn.Module):  # timm's Scale: a per-channel parameter viewed with a stored shape
        def __init__(self, dim):
            super().__init__()
            self.shape = (dim, 1, 1)
            self.scale = nn.Parameter(torch.rand(dim) + 0.5)

        def forward(self, x):
            return x * self.scale.view(self.shape)

    model = nn.Sequential(nn.Conv2d(3, 8, 1), Scale(8), nn.Conv2d(8, 2, 1))
    x = torch.randn(1, 3, 4, 4)
    result = _prune_and_check_oracle(model, x)
    assert model[1].shape == (4, 1, 1)
    assert result.plan.attributes["1"] == {"shape": [[8, 1, 1], [4, 1, 1]]}
    fresh = nn.Sequential(nn.Conv2d(3, 8, 1), Scale(8), nn.Conv2d(8, 2, 1))
    ts.apply_plan(fresh, ts.PruningPlan.from_json(result.plan.to_json()))
    assert fresh[1].shape == (4, 1, 1) and fresh(x).shape == (1, 2, 4, 4)
