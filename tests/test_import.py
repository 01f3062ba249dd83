"""Importing torchslim stays cheap (no optional dependency imported); the public API resolves."""

import subprocess
import sys

import torchslim

HEAVY = [
    "torchvision",
    "timm",
    "onnx",
    "onnxruntime",
    "optuna",
    "transformers",
    "sklearn",
    "mlxtend",
    "mnist1d",
    "torch_pruning",
    "matplotlib",
]


def _imported_after(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_imports_no_extra():
    modules = _imported_after("import torchslim")
    assert not modules & set(HEAVY)
    assert "torch" not in modules  # the top level is lazy: even torch waits until first use


def test_core_verbs_import_no_extra():
    modules = _imported_after(
        "import torchslim as ts\n"
        "ts.profile; ts.load_model; ts.save; ts.load; ts.load_dataset; ts.list_latency_backends()"
    )
    assert "torch" in modules
    assert not modules & set(HEAVY)


def test_every_public_name_resolves():
    for name in torchslim.__all__:
        assert getattr(torchslim, name) is not None, name
    assert sorted(dir(torchslim)) == sorted(torchslim.__all__)


def test_every_public_name_is_documented():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = "".join(p.read_text() for p in [root / "README.md", *(root / "docs").glob("*.md")])
    missing = [n for n in torchslim.__all__ if not re.search(rf"\b{re.escape(n)}\b", text)]
    assert not missing, f"public names missing from README.md and docs/: {missing}"
