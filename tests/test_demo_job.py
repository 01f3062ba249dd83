"""The demo job trains a real model to a real accuracy and saves it reloadably."""

import pytest
import torch

import torchslim as ts
from torchslim._demo_job import DemoConfig, run_demo
from torchslim.errors import ConfigError


def test_demo_trains_profiles_and_saves(tmp_path, capsys):
    pytest.importorskip("sklearn")
    config = DemoConfig(
        dataset="digits",
        epochs=4,
        progress=False,
        out_dir=str(tmp_path),
        threads=2,
        finetune_epochs=4,
    )
    figures = run_demo(config)
    out = capsys.readouterr().out
    assert figures["accuracy"] > 0.85  # 8x8 digits, 4 short epochs; typically ~95%
    assert "DemoResNet" in out and "summary" in out and "after/before" in out
    model = ts.load(tmp_path / "trained").eval()
    assert sum(p.numel() for p in model.parameters()) == figures["params"]
    test = ts.load_dataset("digits", "test")
    inputs, targets = test.tensors
    with torch.no_grad():
        accuracy = (model(inputs).argmax(1) == targets).float().mean().item()
    assert accuracy == pytest.approx(figures["accuracy"])
    # the pruned, fine-tuned model: smaller, still accurate, and reloadable with its plan
    assert figures["pruned_params"] < 0.4 * figures["params"]
    assert figures["recalibrated_accuracy"] >= figures["pruned_accuracy"]
    assert figures["finetuned_accuracy"] > 0.8
    pruned = ts.load(tmp_path / "pruned").eval()
    assert sum(p.numel() for p in pruned.parameters()) == figures["pruned_params"]
    with torch.no_grad():
        pruned_accuracy = (pruned(inputs).argmax(1) == targets).float().mean().item()
    assert pruned_accuracy == pytest.approx(figures["finetuned_accuracy"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("batch_size", 0), ("lr", 0), ("prune_ratio", 1.0), ("finetune_epochs", -1)],
)
def test_config_validation(field, value):
    with pytest.raises(ConfigError, match=field):
        DemoConfig(**{field: value})
