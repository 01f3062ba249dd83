"""Model specs, and saving/loading as safetensors + JSON."""

import json
import sys

import pytest
import torch

import torchslim as ts
from torchslim.errors import MissingExtraError, ModelSpecError
from torchslim.models import DemoResNet, is_saved_model, provenance

FACTORY_FILE = """
import torch
from torch import nn

def make_model(width=4):
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))

not_a_model = lambda: 42
"""


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(FACTORY_FILE)
    return path


def test_torchvision_spec_builds_random_model_with_kwargs():
    pytest.importorskip("torchvision")
    model = ts.load_model("torchvision:resnet18", num_classes=7)
    assert model.fc.out_features == 7
    assert provenance(model) == ("torchvision:resnet18", {"num_classes": 7})


def test_timm_spec():
    pytest.importorskip("timm")
    model = ts.load_model("timm:resnet18", num_classes=3)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_builtin_spec_and_kwargs():
    model = ts.load_model("torchslim:demo_resnet", num_classes=3)
    assert isinstance(model, DemoResNet)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_file_factory_spec(factory_file):
    model = ts.load_model(f"{factory_file}:make_model", width=5)
    assert model[0].out_features == 5
    with pytest.raises(ModelSpecError, match="not a torch.nn.Module"):
        ts.load_model(f"{factory_file}:not_a_model")
    with pytest.raises(ModelSpecError, match="make_model"):
        ts.load_model(f"{factory_file}:make_modle")
    with pytest.raises(ModelSpecError, match="does not exist"):
        ts.load_model("nowhere/missing.py:make_model")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("torchvision:resnet5", "did you mean resnet50"),
        ("tourchvision:resnet18", "unknown model source 'tourchvision'"),
        ("resnet18", "cannot read the model spec"),
        ("torchslim:residul", "did you mean 'residual'"),
    ],
)
def test_bad_specs_say_what_to_do(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        ts.load_model(spec)


def test_missing_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(MissingExtraError, match=r"torchslim\[zoo\]"):
        ts.load_model("timm:resnet18")


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = ts.load_model("torchslim:demo_resnet", widths=(8, 16), depths=(1, 1))
    model.train()
    model(torch.randn(4, 1, 28, 28))  # move the BN running statistics off their defaults
    model.eval()
    path = ts.save(model, tmp_path / "demo", metadata={"note": "x"})
    record = json.loads((path / "torchslim.json").read_text())
    assert record["source"] == "torchslim:demo_resnet"
    assert record["source_kwargs"] == {"widths": [8, 16], "depths": [1, 1]}
    assert record["metadata"] == {"note": "x"}
    loaded = ts.load(path).eval()
    assert not any(p.name.endswith((".pt", ".pth", ".pkl")) for p in path.iterdir())
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # a saved directory is itself a model spec
    assert isinstance(ts.load_model(str(path)), DemoResNet)


def test_save_with_explicit_source_file(factory_file, tmp_path):
    from torch import nn

    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(ModelSpecError, match="source="):
        ts.save(model, tmp_path / "m")
    path = ts.save(
        model, tmp_path / "m", source=f"{factory_file}:make_model", source_kwargs={"width": 6}
    )
    loaded = ts.load(path)
    x = torch.randn(5, 3)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_save_never_destroys_existing_files(tmp_path):
    model = ts.load_model("torchslim:demo_resnet")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ModelSpecError, match="not a saved torchslim model"):
        ts.save(model, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    path = ts.save(model, tmp_path / "saved")
    with pytest.raises(ModelSpecError, match="overwrite=True"):
        ts.save(model, path)
    ts.save(model, path, overwrite=True)
    assert is_saved_model(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious", "saved"]  # no temp leftovers


def test_load_rejects_weights_that_do_not_fit(tmp_path):
    model = ts.load_model("torchslim:demo_resnet")
    path = ts.save(model, tmp_path / "m")
    record = json.loads((path / "torchslim.json").read_text())
    record["source_kwargs"] = {"num_classes": 5}
    (path / "torchslim.json").write_text(json.dumps(record))
    with pytest.raises(ModelSpecError, match="do not fit"):
        ts.load(path)


def test_load_rejects_newer_format(tmp_path):
    path = ts.save(ts.load_model("torchslim:demo_resnet"), tmp_path / "m")
    record = json.loads((path / "torchslim.json").read_text())
    record["format_version"] = 99
    (path / "torchslim.json").write_text(json.dumps(record))
    with pytest.raises(ModelSpecError, match="upgrade torchslim"):
        ts.load(path)


TIED_FILE = """
from torch import nn

class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))

def make():
    return TiedLM()
"""


def test_tied_weights_and_versioned_layers_round_trip(tmp_path):
    path = tmp_path / "tied.py"
    path.write_text(TIED_FILE)
    torch.manual_seed(0)
    model = ts.load_model(f"{path}:make")
    saved = ts.save(model, tmp_path / "tied")
    loaded = ts.load(saved)
    assert loaded.head.weight is loaded.embed.weight  # still tied
    ids = torch.randint(0, 20, (2, 5))
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    # torchvision's MNASNet checks the state dict's version metadata when loading
    pytest.importorskip("torchvision")
    mnas = ts.load_model("torchvision:mnasnet0_5", num_classes=3).eval()
    back = ts.load(ts.save(mnas, tmp_path / "mnas")).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(back(x), mnas(x), rtol=0, atol=0)
