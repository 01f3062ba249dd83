"""export_onnx: every zoo model before and after pruning, names, errors, the model left alone."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim._inputs import as_inputs
from torchslim.cli import main
from torchslim.errors import ConfigError, ExportError
from torchslim.models import get_zoo_model, list_zoo
from torchslim.profiling import pinned_threads

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def one_thread():
    with pinned_threads(1):  # ONNX Runtime's verification session takes torch's thread count
        yield


def _randomise_bn(model):
    """Running statistics away from (0, 1), so that folding them into convs is tested."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def _graph_names(path):
    proto = onnx.load(str(path), load_external_data=False)
    return [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]


@pytest.mark.parametrize("name", list_zoo())
def test_every_zoo_model_exports_and_matches_before_and_after_pruning(name, tmp_path):
    entry = get_zoo_model(name)
    torch.manual_seed(0)
    model = entry.build()
    _randomise_bn(model)
    x = entry.example_inputs(2)
    before = ts.export_onnx(model, x, tmp_path / "dense.onnx")
    assert before.exporter == "torchscript"
    assert before.batch_sizes == (2, 1, 3)
    assert len(before.checks) == 3 * len(before.output_names)
    assert max(before.max_rel_diff.values()) < 1e-3
    assert _graph_names(tmp_path / "dense.onnx") == (
        list(before.input_names),
        list(before.output_names),
    )

    ts.prune_(model, x, ratio=0.5)
    after = ts.export_onnx(model, x, tmp_path / "pruned.onnx")
    assert after.output_names == before.output_names
    assert after.file_bytes < before.file_bytes
    assert max(after.max_rel_diff.values()) < 1e-3


@pytest.mark.parametrize(
    "name, inputs, outputs",
    [
        ("residual", ["input"], ["output"]),
        ("multi_input", ["input_0", "input_1"], ["output"]),
        ("dict_io", ["input_ids", "attention_mask"], ["logits", "hidden"]),
        ("dataclass_output", ["input"], ["logits", "features"]),
    ],
)
def test_input_and_output_names_follow_the_model(name, inputs, outputs, tmp_path):
    entry = get_zoo_model(name)
    result = ts.export_onnx(entry.build(), entry.example_inputs(2), tmp_path / "m.onnx")
    assert list(result.input_names) == inputs
    assert list(result.output_names) == outputs
    assert _graph_names(tmp_path / "m.onnx") == (inputs, outputs)


class Nested(nn.Module):
    def forward(self, x, extra):
        return x.sum(1), (x * 2, {"scaled": extra * 3, "skip": None})


def test_nested_outputs_and_given_names(tmp_path):
    x, extra = torch.randn(2, 4), torch.randn(2, 3)
    result = ts.export_onnx(Nested(), (x, extra), tmp_path / "m.onnx")
    assert result.input_names == ("input_0", "input_1")
    assert result.output_names == ("output_0", "output_1_0", "output_1_1.scaled")
    named = ts.export_onnx(
        Nested(),
        (x, extra),
        tmp_path / "n.onnx",
        input_names=["a", "b"],
        output_names=["total", "double", "triple"],
    )
    assert _graph_names(tmp_path / "n.onnx") == (["a", "b"], ["total", "double", "triple"])
    assert named.max_abs_diff.keys() == {"total", "double", "triple"}
    with pytest.raises(ConfigError, match="output_names has 2 names but the model has 3"):
        ts.export_onnx(Nested(), (x, extra), tmp_path / "o.onnx", output_names=["a", "b"])


def test_integer_inputs_are_drawn_in_the_example_range(tmp_path):
    from torchslim.export._io import random_batch

    entry = get_zoo_model("dict_io")
    inputs = as_inputs(entry.example_inputs(2))
    drawn = random_batch(inputs, 5, seed=0)
    ids = drawn.kwargs["input_ids"]
    assert ids.shape == (5, 12) and ids.dtype == torch.int64
    assert ids.min() >= inputs.kwargs["input_ids"].min()
    assert ids.max() <= inputs.kwargs["input_ids"].max()
    assert set(drawn.kwargs["attention_mask"].unique().tolist()) <= {0, 1}


def test_model_is_left_exactly_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = get_zoo_model("norms").build()
    _randomise_bn(model)
    model.train()
    model.fc2.eval()  # mixed flags must come back as they were
    model.conv1.weight.requires_grad_(False)
    state = copy.deepcopy(model.state_dict())
    flags = [(n, m.training) for n, m in model.named_modules()]
    grads = [(n, p.requires_grad) for n, p in model.named_parameters()]
    ts.export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "m.onnx")
    assert [(n, m.training) for n, m in model.named_modules()] == flags
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == grads
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state)  # running stats untouched too


class Twice(torch.autograd.Function):
    """Doubles in eager, but its ONNX translation triples."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def symbolic(g, x):
        return g.op("Mul", x, g.op("Constant", value_t=torch.tensor(3.0)))


class WrongExport(nn.Module):
    def forward(self, x):
        return {"fine": x + 1, "wrong": Twice.apply(x)}


def test_an_output_that_differs_raises_naming_it(tmp_path):
    with pytest.raises(ExportError) as info:
        ts.export_onnx(WrongExport(), torch.ones(2, 3), tmp_path / "m.onnx", exporter="torchscript")
    message = str(info.value)
    assert "'wrong'" in message and "'fine'" not in message
    assert "batch size 2" in message and "max abs diff 1" in message
    assert (tmp_path / "m.onnx").exists()  # kept for inspection


class BakedBatch(nn.Module):
    def forward(self, x):
        return x * float(x.shape[0])  # a Python number: the trace keeps the example's batch


def test_a_baked_batch_size_is_caught_on_another_batch(tmp_path):
    with pytest.raises(ExportError, match=r"'output'.*random batch of size 1.*baked"):
        ts.export_onnx(BakedBatch(), torch.randn(2, 3), tmp_path / "m.onnx", exporter="torchscript")
    result = ts.export_onnx(
        BakedBatch(), torch.randn(2, 3), tmp_path / "s.onnx", dynamic_batch=False
    )
    assert result.batch_sizes == (2,) and not result.dynamic_batch


def test_a_wrong_session_output_raises(tmp_path, monkeypatch):
    import onnxruntime

    real = onnxruntime.InferenceSession.run

    def off_by_a_bit(self, names, feed, *args):
        return [o + 0.01 for o in real(self, names, feed, *args)]

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", off_by_a_bit)
    model = get_zoo_model("dataclass_output").build()
    with pytest.raises(ExportError, match="ONNX output 'logits' differs"):
        ts.export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "m.onnx")


class OddPool(nn.Module):
    """Adaptive pooling to a size that does not divide the input: TorchScript cannot export it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(3)

    def forward(self, x):
        return self.pool(self.conv(x)).flatten(1)


def test_auto_falls_back_to_dynamo(tmp_path, capfd):
    pytest.importorskip("onnxscript")
    result = ts.export_onnx(OddPool(), torch.randn(1, 3, 4, 4), tmp_path / "m.onnx")
    assert result.exporter == "dynamo"
    assert result.batch_sizes == (1, 2, 3)  # the batch stays dynamic from an example of 1
    assert "Torch IR graph" not in capfd.readouterr().out  # the failed exporter's log is hidden
    with pytest.raises(ExportError, match="torchscript: .*adaptive_avg_pool2d"):
        ts.export_onnx(
            OddPool(), torch.randn(1, 3, 4, 4), tmp_path / "t.onnx", exporter="torchscript"
        )


def test_result_round_trips_and_prints(tmp_path):
    entry = get_zoo_model("dict_io")
    result = ts.export_onnx(entry.build(), entry.example_inputs(2), tmp_path / "m.onnx", opset=17)
    assert result.opset == 17
    assert ts.ExportResult.from_dict(result.to_dict()) == result
    text = str(result)
    assert "logits" in text and "max abs diff" in text and "opset 17" in text
    assert dataclasses.replace(result, checks=()).table() == "not verified (verify=False)"


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="exporter must be one of"):
        ts.export_onnx(nn.Linear(2, 2), torch.randn(1, 2), tmp_path / "m.onnx", exporter="tvm")
    with pytest.raises(ConfigError, match="both inputs and outputs"):
        ts.export_onnx(
            nn.Linear(2, 2), torch.randn(1, 2), tmp_path / "m.onnx", output_names=["input"]
        )


def test_cli_export_prints_the_figures(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "torchslim:residual", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max abs diff" in text and "1, 2, 3" in text and out.exists()
    assert main(["export", "torchslim:residual", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    code = main(
        ["export", "torchslim:residual", "--out", str(out), "--overwrite", "--static-batch"]
    )
    assert code == 0 and "static shapes" in capsys.readouterr().out
