"""The latency table: kernels (eager calls, ONNX Runtime nodes), the cache file, missing kernels,
the fit."""

import json
import logging
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchslim as ts
from torchslim.errors import ConfigError
from torchslim.search import LatencyCorrection, LatencyTable

CONV = "Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)"
BN = f"BatchNorm2d({nn.BatchNorm2d(8).extra_repr()})"  # its fields vary across torch versions
MAP = "1x8x16x16:float32"
STEM = (
    "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False) "
    "@ (1x3x16x16:float32)"
)


class Block(nn.Module):
    """conv-BN-ReLU, conv-BN, residual add, functional ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + x)


class Net(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(Block(), Block())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


def x16():
    return torch.randn(1, 3, 16, 16)


def expected_eager():
    return Counter(
        {
            STEM: 1,
            f"{CONV} @ ({MAP})": 4,
            f"{BN} @ ({MAP})": 4,
            f"ReLU(inplace=True) @ ({MAP})": 2,
            f"torch.Tensor.add({MAP}, {MAP})": 2,
            f"torch.relu({MAP})": 2,
            f"AdaptiveAvgPool2d(output_size=1) @ ({MAP})": 1,
            "torch.flatten(1x8x1x1:float32, 1)": 1,
            "Dropout(p=0.1, inplace=False) @ (1x8:float32)": 1,
            "Linear(in_features=8, out_features=4, bias=True) @ (1x8:float32)": 1,
        }
    )


def test_eager_kernels_are_every_module_and_function_call():
    kernels = LatencyTable("eager", cache=False).kernels(Net().eval(), x16())
    assert Counter(k.key for k in kernels) == expected_eager()
    assert [k.name for k in kernels[:4]] == [
        "stem",
        "blocks.0.conv1",
        "blocks.0.bn1",
        "blocks.0.relu",
    ]
    assert kernels[6].name == "blocks.0:add"  # a function, named by the module that called it
    assert {k.kind for k in kernels} == {"module", "function"}
    assert kernels[1].elements == 2 * 8 * 16 * 16
    assert kernels[1].params == 8 * 8 * 3 * 3 and kernels[2].params == 2 * 8 + 2 * 8 + 1


class Wide(nn.Module):
    """16 channels: a multiple of ONNX Runtime's blocked-layout width (8 or 16), so no padding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)) + x)
        return self.fc(self.drop(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def ops(kernels):
    return Counter(k.key.split("(", 1)[0].rsplit(".", 1)[-1] for k in kernels)


def test_onnxruntime_kernels_are_the_nodes_of_the_optimised_graph():
    pytest.importorskip("onnxruntime")
    kernels = LatencyTable("onnxruntime", threads=1, cache=False).kernels(Wide().eval(), x16())
    found = ops(kernels)
    # batch norm folded into the convolutions, dropout gone, the final ReLU and the residual
    # addition fused into the second convolution (the CPU provider's fusions)
    assert found["Conv"] + found["FusedConv"] == 2
    assert not {"BatchNormalization", "Dropout", "Identity"} & set(found)
    assert {k.kind for k in kernels} == {"node"}
    convs = [k for k in kernels if k.key.split("(", 1)[0].endswith("Conv")]
    assert [k.params for k in convs] == [16 * 3 * 9 + 16, 16 * 16 * 9 + 16]  # folded BN: bias
    assert all(k.matrix for k in convs)
    gemm = next(k for k in kernels if k.key.startswith("Gemm("))
    assert gemm.params == 16 * 4 + 4 and gemm.matrix and gemm.elements == 16 + 4
    assert "-> (1x4:float32)" in gemm.key and "w 4x16:float32" in gemm.key
    assert not any(k.matrix for k in kernels if k not in convs and k is not gemm)
    assert all(k.reordered == (" Reorder" in f" {k.key.split('(', 1)[0].rsplit('.', 1)[-1]}")
               for k in kernels)  # fmt: skip
    assert all(k.name for k in kernels) and any("conv" in k.name for k in convs)


class Twins(nn.Module):
    """The same weightless computation twice on one input, and two convolutions on it."""

    def __init__(self) -> None:
        super().__init__()
        self.pools = nn.ModuleList([nn.AvgPool2d(3, 1, 1), nn.AvgPool2d(3, 1, 1)])
        self.convs = nn.ModuleList([nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)])

    def forward(self, x):
        return self.pools[0](x) * self.pools[1](x) * self.convs[0](x) * self.convs[1](x)


def test_onnxruntime_computes_a_repeated_weightless_op_once():
    pytest.importorskip("onnxruntime")
    eager = LatencyTable("eager", cache=False).kernels(Twins(), x16())
    ort = LatencyTable("onnxruntime", threads=1, cache=False).kernels(Twins(), x16())
    assert ops(eager)["AvgPool2d"] == 2 and ops(ort)["AveragePool"] == 1  # its optimiser's CSE
    assert ops(eager)["Conv2d"] == 2 and ops(ort)["Conv"] + ops(ort)["FusedConv"] == 2


class Tokens(nn.Module):
    """Attention and reshapes: integer shape tensors flow between nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, ids):
        x = self.embed(ids)
        x, _ = self.attn(x, x, x, need_weights=False)
        return self.fc(x.reshape(ids.shape[0], ids.shape[1], -1).mean(1))


def test_onnxruntime_kernels_of_a_token_model_time_and_predict():
    pytest.importorskip("onnxruntime")
    ids = torch.randint(0, 50, (1, 7))
    table = LatencyTable("onnxruntime", threads=1, cache=False, target_ms=0.5, passes=1)
    pred = table.predict(Tokens().eval(), ids)
    assert pred.measured_now == len({key for _, key, _ in pred.kernels}) + 1
    assert all(ms is not None for ms in table.entries.values())  # every node ran alone
    assert any("int64" in key for _, key, _ in pred.kernels)  # the ids, or shape tensors
    assert pred.features["params_m"] * 1e6 >= 50 * 16 + 3 * 16 * 16 + 16 * 3


def test_eager_kernels_mark_matrix_kernels():
    kernels = LatencyTable("eager", cache=False).kernels(Net().eval(), x16())
    assert {k.key.split("(", 1)[0] for k in kernels if k.matrix} == {"Conv2d", "Linear"}
    assert not any(k.reordered for k in kernels)


class FakeTimer:
    """Times nothing: a made-up latency per key, and a count of the calls."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, kernel):
        self.keys.append(kernel.key)
        return 0.001 if kernel.key == "(empty)" else 0.01 + 0.001 * (len(kernel.key) % 13)


def test_cache_round_trip_reloads_every_entry_without_measuring(tmp_path):
    path = tmp_path / "table.json"
    timer = FakeTimer()
    first = LatencyTable("eager", threads=1, cache=path, timer=timer)
    p1 = first.predict(Net(), x16())
    unique = len(expected_eager())
    assert len(timer.keys) == unique + 1 == p1.measured_now  # each key once, plus (empty)
    assert len(set(timer.keys)) == len(timer.keys)
    again = first.predict(Net(), x16())
    assert again.measured_now == 0 and len(timer.keys) == unique + 1

    timer2 = FakeTimer()
    second = LatencyTable("eager", threads=1, cache=path, timer=timer2)
    p2 = second.predict(Net(), x16())
    assert timer2.keys == [] and p2.measured_now == 0
    assert second.entries == first.entries and len(second.entries) == unique + 1
    assert p2.ms == pytest.approx(p1.ms) and p2.raw_ms == p1.ms  # no correction: the raw sum
    data = json.loads(path.read_text())
    (section,) = data["tables"].values()
    assert section["key"]["threads"] == 1 and section["key"]["batch_size"] == 1


@pytest.mark.parametrize("change", ["threads", "torch"])
def test_a_file_for_other_settings_is_not_reused(tmp_path, monkeypatch, caplog, change):
    path = tmp_path / "table.json"
    LatencyTable("eager", threads=1, cache=path, timer=FakeTimer()).predict(Net(), x16())
    if change == "torch":
        monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    timer = FakeTimer()
    other = LatencyTable("eager", threads=2 if change == "threads" else 1, cache=path, timer=timer)
    with caplog.at_level(logging.WARNING, logger="torchslim.search._latency_table"):
        other.predict(Net(), x16())
    assert len(timer.keys) == len(expected_eager()) + 1  # everything measured again
    assert "not reused" in caplog.text and change in caplog.text
    tables = json.loads(path.read_text())["tables"]
    assert len(tables) == 2  # the other settings' measurements are kept, apart
    assert all(len(t["entries"]) == len(expected_eager()) + 1 for t in tables.values())


def test_batch_size_is_part_of_the_key():
    table = LatencyTable("eager", cache=False, timer=FakeTimer())
    table.predict(Net(), x16())
    with pytest.raises(ConfigError, match="batch size 1 .* batch size 2"):
        table.predict(Net(), torch.randn(2, 3, 16, 16))


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from torch import nn
    from torchslim.search import LatencyTable

    path, me, sizes = Path(sys.argv[1]), sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
    (path.parent / f"ready-{me}").touch()
    while len(list(path.parent.glob("ready-*"))) < 2:  # start together
        time.sleep(0.01)
    table = LatencyTable("eager", threads=1, cache=path, timer=lambda kernel: 0.01)
    for size in sizes:  # every predict adds one kernel and writes the file
        table.predict(nn.Conv2d(3, 4, 1), torch.zeros(1, 3, size, size))
    """
)


def test_concurrent_writers_lose_no_kernel(tmp_path):
    path = tmp_path / "shared.json"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    sizes = {"a": list(range(2, 42, 2)), "b": list(range(3, 43, 2))}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), me, ",".join(map(str, s))],
            stderr=subprocess.PIPE,
        )
        for me, s in sizes.items()
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    (section,) = json.loads(path.read_text())["tables"].values()
    want = {
        f"Conv2d(3, 4, kernel_size=(1, 1), stride=(1, 1)) @ (1x3x{s}x{s}:float32)"
        for ss in sizes.values()
        for s in ss
    }
    assert set(section["entries"]) == want | {"(empty)"}


def test_predict_without_measuring_names_the_missing_kernel():
    timer = FakeTimer()
    table = LatencyTable("eager", cache=False, timer=timer)
    table.predict(Net(), x16())
    calls = len(timer.keys)
    wider = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Conv2d(8, 16, 1))
    with pytest.raises(ConfigError, match=r"Conv2d\(8, 16, kernel_size=\(1, 1\).* at '1'"):
        table.predict(wider, x16(), measure_missing=False)
    assert len(timer.keys) == calls  # nothing was timed
    known = table.predict(Net(), x16(), measure_missing=False)  # everything known: no error
    assert known.measured_now == 0


def synthetic(n: int, noise: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = [
        {
            "kernel_ms": rng.uniform(0.5, 10),
            "kernels": float(rng.integers(20, 300)),
            "memory_ms": rng.uniform(0.01, 2),
            "params_m": rng.uniform(0.1, 3),
            "const": 1.0,
        }
        for _ in range(n)
    ]
    y = [
        (0.8 * r["kernel_ms"] + 0.004 * r["kernels"] + 0.3) * (1 + rng.normal(0, noise))
        for r in rows
    ]
    return rows, y


def test_correction_recovers_known_coefficients():
    rows, y = synthetic(12)
    fit = LatencyCorrection.fit(rows, y, feature_sets=[("kernel_ms", "kernels", "const")])
    assert fit.coefficients == pytest.approx((0.8, 0.004, 0.3), rel=1e-6)
    auto = LatencyCorrection.fit(rows, y)  # the simplest exact subset wins leave-one-out
    assert auto.features == ("kernel_ms", "kernels", "const")
    assert auto.coefficients == pytest.approx((0.8, 0.004, 0.3), rel=1e-6)
    assert auto.loo_mape < 1e-9 and auto.models == 12
    assert LatencyCorrection.from_dict(json.loads(json.dumps(auto.to_dict()))) == auto
    noisy = LatencyCorrection.fit(
        *synthetic(40, noise=0.01, seed=1), feature_sets=[("kernel_ms", "kernels", "const")]
    )
    assert noisy.coefficients[0] == pytest.approx(0.8, rel=0.05)
    assert 0.005 < noisy.loo_mape < 0.02  # the 1% noise, not zero


def test_correction_must_rest_on_the_kernel_sum():
    rows, _ = synthetic(12)
    flat = [5.0 + 0.001 * i for i in range(12)]  # latencies that ignore the kernel sum
    with pytest.raises(ConfigError, match="kernel sum"):  # a constant would fit them best
        LatencyCorrection.fit(rows, flat, feature_sets=[("kernel_ms", "const")])
    fit = LatencyCorrection.fit(rows, flat)  # auto: a fit that still follows the kernels
    shares = [fit.coefficients[0] * r["kernel_ms"] / fit(r) for r in rows]
    assert np.mean(shares) >= 0.5


def test_correction_with_few_models_uses_few_features():
    rows, y = synthetic(3)
    fit = LatencyCorrection.fit(rows, y)
    assert len(fit.features) < 3
    with pytest.raises(ConfigError, match="feature rows"):
        LatencyCorrection.fit(rows, y[:2])


def test_calibrate_on_latencies_measured_already():
    table = LatencyTable("eager", cache=False, timer=FakeTimer())
    models = [Net(), nn.Sequential(Net(), nn.ReLU()), nn.Sequential(Net(), nn.Tanh())]
    features = [table.predict(m, x16()).features for m in models]
    want = [2.0 * f["kernel_ms"] for f in features]  # made-up latencies: twice the kernel sum
    fit = table.calibrate(models, x16(), feature_sets=[("kernel_ms",)], measured_ms=want)
    assert fit.coefficients == pytest.approx((2.0,)) and fit.models == 3
    assert table.predict(models[0], x16()).ms == pytest.approx(want[0])  # nothing timed whole
    with pytest.raises(ConfigError, match="2 measured latencies for 3 models"):
        table.calibrate(models, x16(), measured_ms=want[:2])


def test_real_eager_timing_and_automatic_calibration():
    table = LatencyTable(
        "eager", threads=1, cache=False, target_ms=1.0, rounds=2, runs=3, calibrate_first=2
    )
    first = table.predict(Net(), x16())
    assert first.measured_ms is not None and not first.corrected
    assert all(ms is not None and ms > 0 for ms in table.entries.values())
    second = table.predict(Net(), torch.randn(1, 3, 24, 24))
    assert table.correction is not None and table.correction.models == 2
    third = table.predict(Net(), x16())
    assert third.corrected and third.measured_ms is None and third.measured_now == 0
    assert float(third) == third.ms > 0 and second.measured_ms > 0


def test_real_onnxruntime_kernel_timing():
    pytest.importorskip("onnxruntime")
    table = LatencyTable("onnxruntime", threads=1, cache=False, target_ms=1.0, rounds=2, runs=3)
    pred = table.predict(Wide(), x16())
    nodes = table.kernels(Wide().eval(), x16())
    assert pred.measured_now == len({k.key for k in nodes}) + 1  # each node key, and (empty)
    assert all(ms is not None and ms > 0 for ms in table.entries.values())
    assert [row[:2] for row in pred.kernels] == [(k.name, k.key) for k in nodes]
    assert pred.features["kernels"] == len(nodes)
    conv = sum(ms for _, key, ms in pred.kernels if key.split("(", 1)[0].endswith("Conv"))
    assert pred.features["memory_ms"] == pytest.approx(pred.features["kernel_ms"] - conv - next(
        ms for _, key, ms in pred.kernels if key.startswith("Gemm(")))  # fmt: skip
    again = table.predict(Wide(), x16())
    assert again.measured_now == 0 and again.ms == pytest.approx(pred.ms)
    measured = table.measure(Wide(), x16())
    assert measured.backend == "onnxruntime" and measured.median_ms > 0


def test_top_level_export():
    assert ts.LatencyTable is LatencyTable
