"""Calibration: statistics stream (state does not grow with the batches, no output is kept), the
model is left exactly as it was, batch formats and budgets, and a missing calibration."""

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.errors import ConfigError
from torchslim.importance import LRP, Activation, Energy, HRank, Taylor
from torchslim.models import DemoResNet

CALIBRATED = [Activation, HRank, Energy, Taylor, LRP]


def _tiny():
    model = DemoResNet(widths=(4, 8), depths=(1, 1))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _batches(n, size=2):
    g = torch.Generator().manual_seed(n)
    return [
        (torch.rand(size, 1, 12, 12, generator=g), torch.randint(0, 10, (size,), generator=g))
        for _ in range(n)
    ]


def _state_bytes(obj, seen=None):
    """Bytes of every tensor and array reachable from a criterion's attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_state_bytes(k, seen) + _state_bytes(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set)):
        return sum(_state_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
        return _state_bytes(vars(obj), seen)
    return 0


def _hooks(model):
    found = []
    for name, m in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
        ):
            if getattr(m, attr, None):
                found.append((name, attr))
    from torch.nn.modules import module as M

    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(M, attr, None):
            found.append(("<global>", attr))
    return found


@pytest.mark.parametrize("cls", CALIBRATED, ids=lambda c: c.__name__)
def test_state_does_not_grow_with_the_batches_and_no_output_is_kept(cls):
    model = _tiny()
    graph = ts.trace(model, torch.rand(1, 1, 12, 12))
    outputs = []  # weak references to every module output of the calibration run
    handles = [
        m.register_forward_hook(lambda m, a, out: outputs.append(weakref.ref(out)))
        for m in model.modules()
        if not list(m.children())
    ]
    sizes = []
    gc.disable()  # as in ts.prune_: outputs must be freed by reference counting alone
    try:
        for n in (2, 20):
            crit = cls()
            crit.prepare(graph, _batches(n))
            sizes.append(_state_bytes(crit))
        assert outputs and not [r for r in outputs if r() is not None]
    finally:
        gc.enable()
        for h in handles:
            h.remove()
    assert sizes[0] == sizes[1] > 0


@pytest.mark.parametrize("cls", CALIBRATED, ids=lambda c: c.__name__)
def test_the_model_is_left_exactly_as_it_was(cls):
    model = _tiny()
    model.train()
    model.stages[0].eval()  # a mix of flags, restored module by module
    model.fc.weight.requires_grad_(False)
    sentinel = torch.full_like(model.stem[0].weight, 7.0)
    model.stem[0].weight.grad = sentinel
    flags = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    graph = ts.trace(model, torch.rand(1, 1, 12, 12))
    cls().prepare(graph, _batches(3))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # running statistics did not move
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert not model.fc.weight.requires_grad and model.fc.bias.requires_grad
    assert model.stem[0].weight.grad is sentinel and (sentinel == 7).all()
    assert all(p.grad is None for n, p in model.named_parameters() if n != "stem.0.weight")
    assert _hooks(model) == []


def test_hooks_are_removed_when_calibration_fails():
    model = _tiny()
    graph = ts.trace(model, torch.rand(1, 1, 12, 12))
    with pytest.raises(RuntimeError):
        Energy().prepare(graph, [torch.rand(2, 3, 12, 12)])  # wrong channel count
    assert _hooks(model) == []
    assert model.training


def test_batch_formats_and_budget():
    model = _tiny()
    graph = ts.trace(model, torch.rand(1, 1, 12, 12))
    pairs = _batches(5, size=3)
    ref = Activation()
    ref.prepare(graph, pairs[:2])
    for data in ([x for x, _ in pairs[:2]], [[x, y] for x, y in pairs[:2]], iter(pairs)):
        crit = Activation()
        crit.prepare(graph, data, batches=2)
        assert crit._counts == ref._counts == {name: 6 for name in ref._counts}
        for name, s in crit.module_scores().items():
            assert np.allclose(s, ref.module_scores()[name])


def test_keyword_batches():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, *, features):
            return self.b(torch.relu(self.a(features)))

    model = Keyword()
    graph = ts.trace(model, {"features": torch.randn(1, 3)})
    crit = Energy()
    crit.prepare(graph, [{"features": torch.randn(5, 3)}])
    assert crit.module_scores()["a"].shape == (4,)


def test_bad_calibration_data():
    model = _tiny()
    graph = ts.trace(model, torch.rand(1, 1, 12, 12))
    with pytest.raises(ConfigError, match="no batch"):
        Energy().prepare(graph, [])
    with pytest.raises(ConfigError, match=r"calibration=\[batch\]"):
        Energy().prepare(graph, torch.rand(2, 1, 12, 12))
    with pytest.raises(ConfigError, match="calibration="):
        Energy().prepare(graph, None)
