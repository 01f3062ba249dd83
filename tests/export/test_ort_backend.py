"""The onnxruntime latency backend: registered, pinned threads, all optimisations, sane figures."""

import pytest
import torch

import torchslim as ts
from torchslim._inputs import as_inputs
from torchslim.errors import ConfigError
from torchslim.models import get_zoo_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def test_profile_with_onnxruntime_reports_its_threads():
    assert "onnxruntime" in ts.list_latency_backends()
    entry = get_zoo_model("residual")
    prof = ts.profile(
        entry.build(), entry.example_inputs(4), backend="onnxruntime", threads=1, warmup=2, runs=5
    )
    lat = prof.latency
    assert lat.backend == "onnxruntime" and lat.device == "cpu"
    assert (lat.threads, lat.runs, lat.warmup, lat.batch_size) == (1, 5, 2, 4)
    assert 0 < lat.min_ms <= lat.median_ms <= lat.max_ms < 1000
    assert len(lat.samples_ms) == 5


def test_session_is_optimised_and_pinned():
    from torchslim.export import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend()
    entry = get_zoo_model("dict_io")  # keyword inputs, two outputs
    lat = ts.measure_latency(
        entry.build(), as_inputs(entry.example_inputs(2)), backend=backend, threads=1, runs=3
    )
    options = backend.session.get_session_options()
    assert options.intra_op_num_threads == lat.threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    assert [i.name for i in backend.session.get_inputs()] == ["input_ids", "attention_mask"]
    assert backend.session.get_inputs()[0].shape == [2, 12]  # static shapes for timing


def test_prepared_file_or_session(tmp_path):
    from torchslim.export import OnnxRuntimeBackend

    model, x = torch.nn.Linear(8, 4).eval(), torch.randn(3, 8)
    result = ts.export_onnx(model, x, tmp_path / "m.onnx")
    lat = ts.measure_latency(
        model, as_inputs(x), backend=OnnxRuntimeBackend(result.path), threads=1, runs=3
    )
    assert lat.backend == "onnxruntime" and lat.threads == 1

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(result.path, options, providers=["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="intra_op_num_threads=2 but the profile pins 1"):
        ts.measure_latency(model, as_inputs(x), backend=OnnxRuntimeBackend(session), threads=1)
    lat = ts.measure_latency(
        model, as_inputs(x), backend=OnnxRuntimeBackend(session), threads=2, runs=3
    )
    assert lat.threads == 2


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA EP present"
)
def test_cuda_without_the_cuda_provider_says_what_to_install():
    from torchslim.export._ort_backend import _providers

    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        _providers(ort, torch.device("cuda", 0))
    with pytest.raises(ConfigError, match="cpu or cuda"):
        _providers(ort, torch.device("mps"))
