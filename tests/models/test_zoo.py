"""The built-in test zoo: every model runs, is small and deterministic, and its tags are honest."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from torchslim._inputs import as_inputs
from torchslim.errors import ConfigError, ModelSpecError
from torchslim.models import _zoo
from torchslim.models._zoo import ZOO_TAGS, ZooModel, get_zoo_model, list_zoo, register_zoo_model

MAX_PARAMS = 200_000

# structures a structural pruner must handle; each needs at least one zoo model
REQUIRED_TAGS = {
    "conv",
    "residual",
    "depthwise",
    "grouped",
    "concat",
    "split",
    "se",
    "attention",
    "layernorm",
    "recurrent",
    "multi_input",
    "dict_output",
    "mha",
}

ZOO_NAMES = [
    "attention",
    "concat_split",
    "conv_chain",
    "dataclass_output",
    "depthwise",
    "dict_io",
    "grouped",
    "gru",
    "lstm",
    "mha",
    "multi_input",
    "norms",
    "residual",
    "squeeze_excite",
]


def run(model: nn.Module, inputs: Any) -> Any:
    with torch.no_grad():
        return as_inputs(inputs).call(model)


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Tensors of a tensor, tuple, dict or dataclass output, in a stable order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in output_tensors(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in output_tensors(item)]
    if dataclasses.is_dataclass(out):
        return [t for f in dataclasses.fields(out) for t in output_tensors(getattr(out, f.name))]
    raise AssertionError(f"unexpected output type {type(out).__name__}")


def mods(model: nn.Module, kind: type | tuple[type, ...]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def has_params_outside_standard_layers(model: nn.Module) -> bool:
    standard = (nn.Conv2d, nn.Linear, nn.LayerNorm, nn.Embedding, nn.BatchNorm2d)
    return any(
        not isinstance(m, standard) and any(True for _ in m.parameters(recurse=False))
        for m in model.modules()
    )


# tag -> a check on the built model that the structure is really there
MODULE_CHECKS = {
    "conv": lambda m: any(c.groups == 1 for c in mods(m, nn.Conv2d)),
    "bn": lambda m: bool(mods(m, (nn.BatchNorm1d, nn.BatchNorm2d))),
    "linear": lambda m: bool(mods(m, nn.Linear)),
    "flatten": lambda m: bool(mods(m, nn.Flatten)),
    "depthwise": lambda m: any(
        c.groups > 1 and c.groups == c.in_channels for c in mods(m, nn.Conv2d)
    ),
    "grouped": lambda m: any(1 < c.groups < c.in_channels for c in mods(m, nn.Conv2d)),
    "transposed_conv": lambda m: bool(mods(m, nn.ConvTranspose2d)),
    "mha": lambda m: bool(mods(m, nn.MultiheadAttention)),
    "layernorm": lambda m: bool(mods(m, nn.LayerNorm)),
    "embedding": lambda m: bool(mods(m, nn.Embedding)),
    "recurrent": lambda m: bool(mods(m, (nn.LSTM, nn.GRU))),
    "groupnorm": lambda m: bool(mods(m, nn.GroupNorm)),
    "instancenorm": lambda m: any(n.affine for n in mods(m, nn.InstanceNorm2d)),
    "prelu": lambda m: any(p.num_parameters > 1 for p in mods(m, nn.PReLU)),
    "free_params": has_params_outside_standard_layers,
}


@pytest.fixture
def private_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, ZooModel]:
    """An empty registry for the test; the real one is restored afterwards."""
    registry: dict[str, ZooModel] = {}
    monkeypatch.setattr(_zoo, "_REGISTRY", registry)
    return registry


@pytest.fixture
def copied_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, ZooModel]:
    """A copy of the real registry for the test; the real one is restored afterwards."""
    registry = dict(_zoo._REGISTRY)
    monkeypatch.setattr(_zoo, "_REGISTRY", registry)
    return registry


# --- every model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_zoo())
def test_forward_runs_and_keeps_batch(name: str) -> None:
    entry = get_zoo_model(name)
    torch.manual_seed(0)
    model = entry.build()
    assert isinstance(model, nn.Module)
    assert not model.training, "build() must return a model in eval mode"

    out2 = output_tensors(run(model, entry.example_inputs(2)))
    out3 = output_tensors(run(model, entry.example_inputs(3)))
    assert out2 and len(out2) == len(out3)
    for a, b in zip(out2, out3, strict=True):
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        assert a.shape[0] == 2 and b.shape[0] == 3
        assert a.shape[1:] == b.shape[1:]
    assert as_inputs(entry.example_inputs(3)).batch_size == 3


@pytest.mark.parametrize("name", list_zoo())
def test_same_seed_builds_same_model(name: str) -> None:
    entry = get_zoo_model(name)
    inputs = entry.example_inputs(2)
    torch.manual_seed(0)
    first = entry.build()
    torch.manual_seed(0)
    second = entry.build()
    torch.manual_seed(1)
    other = entry.build()

    outs = output_tensors(run(first, inputs)), output_tensors(run(second, inputs))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert first.state_dict().keys() == second.state_dict().keys()
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert first is not second
    assert not all(
        torch.equal(p, q) for p, q in zip(first.parameters(), other.parameters(), strict=True)
    ), "another seed must give other weights"


@pytest.mark.parametrize("name", list_zoo())
def test_example_inputs_are_fixed_and_leave_global_rng_alone(name: str) -> None:
    entry = get_zoo_model(name)
    state = torch.random.get_rng_state()
    first = as_inputs(entry.example_inputs(2)).tensors()
    second = as_inputs(entry.example_inputs(2)).tensors()
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list_zoo())
def test_model_is_small_and_documented(name: str) -> None:
    entry = get_zoo_model(name)
    model = entry.build()
    n_params = sum(p.numel() for p in model.parameters())
    assert 0 < n_params < MAX_PARAMS, f"{name} has {n_params} parameters"
    assert entry.name == name
    assert entry.description
    assert type(model).__doc__, f"{type(model).__name__} needs a docstring"


@pytest.mark.parametrize("name", list_zoo())
def test_tags_match_the_model(name: str) -> None:
    entry = get_zoo_model(name)
    assert entry.tags <= ZOO_TAGS
    model = entry.build()
    for tag in sorted(entry.tags & MODULE_CHECKS.keys()):
        assert MODULE_CHECKS[tag](model), f"{name} is tagged {tag!r} but lacks that structure"
    inputs = entry.example_inputs(2)
    out = run(model, inputs)
    assert ("multi_input" in entry.tags) == (isinstance(inputs, tuple) and len(inputs) > 1)
    assert ("dict_input" in entry.tags) == isinstance(inputs, dict)
    assert ("dict_output" in entry.tags) == isinstance(out, dict)
    assert ("dataclass_output" in entry.tags) == dataclasses.is_dataclass(out)


# --- the zoo as a whole --------------------------------------------------------------------------


def test_zoo_has_the_listed_models() -> None:
    assert set(ZOO_NAMES) <= set(list_zoo())


def test_every_tag_is_covered() -> None:
    covered = set().union(*(get_zoo_model(n).tags for n in list_zoo()))
    assert covered == ZOO_TAGS
    assert REQUIRED_TAGS <= ZOO_TAGS


@pytest.mark.parametrize("tag", sorted(REQUIRED_TAGS))
def test_required_structure_is_covered(tag: str) -> None:
    assert list_zoo(tags=[tag]), f"no zoo model covers {tag!r}"


def test_build_passes_keyword_overrides() -> None:
    entry = get_zoo_model("residual")
    model = entry.build(num_classes=3)
    assert not model.training
    assert run(model, entry.example_inputs(2)).shape == (2, 3)


def test_dict_io_honours_attention_mask() -> None:
    entry = get_zoo_model("dict_io")
    model = entry.build()
    inputs = entry.example_inputs(2)
    out = run(model, inputs)
    assert set(out) == {"logits", "hidden"}
    assert out["hidden"].shape[:2] == inputs["input_ids"].shape
    masked = dict(inputs, input_ids=inputs["input_ids"].clone())
    masked["input_ids"][1, -1] = (masked["input_ids"][1, -1] + 1) % _zoo.VOCAB
    assert inputs["attention_mask"][1, -1] == 0
    torch.testing.assert_close(run(model, masked)["logits"], out["logits"])


# --- listing and lookup --------------------------------------------------------------------------


def test_list_zoo_filters_the_real_zoo() -> None:
    names = list_zoo()
    assert names == sorted(names)
    assert list_zoo(tags=["recurrent"]) == ["gru", "lstm"]
    assert list_zoo(tags="mha") == ["mha"]
    assert list_zoo("*_io") == ["dict_io"]
    assert list_zoo(tags=["depthwise", "residual"]) == ["depthwise"]
    assert list_zoo("conv*", tags=["flatten"]) == ["conv_chain"]
    assert list_zoo("*", tags=["concat"]) == ["concat_split", "multi_input"]
    assert list_zoo("nothing*") == []


def test_list_zoo_pattern_and_all_tags(private_registry: dict[str, ZooModel]) -> None:
    def factory() -> nn.Module:
        return nn.Linear(2, 2)

    x = lambda b: torch.zeros(b, 2)  # noqa: E731
    register_zoo_model("b_net", tags=["linear"], inputs=x)(factory)
    register_zoo_model("a_net", tags=["linear", "bn"], inputs=x)(factory)
    register_zoo_model("a_other", tags=["conv", "bn"], inputs=x)(factory)

    assert list_zoo() == ["a_net", "a_other", "b_net"]
    assert list_zoo("a_*") == ["a_net", "a_other"]
    assert list_zoo("*net") == ["a_net", "b_net"]
    assert list_zoo(tags=["bn"]) == ["a_net", "a_other"]
    assert list_zoo(tags=["bn", "linear"]) == ["a_net"]
    assert list_zoo("b*", tags=["bn"]) == []
    assert list_zoo(tags=[]) == ["a_net", "a_other", "b_net"]


def test_list_zoo_rejects_unknown_tag() -> None:
    with pytest.raises(ConfigError, match="recurent"):
        list_zoo(tags=["recurent"])


def test_get_zoo_model_unknown_name_suggests_close_match() -> None:
    with pytest.raises(ModelSpecError) as info:
        get_zoo_model("residul")
    message = str(info.value)
    assert "did you mean 'residual'" in message
    assert "squeeze_excite" in message  # lists the known names
    assert isinstance(info.value, ValueError)


# --- registration --------------------------------------------------------------------------------


def test_register_adds_model_and_returns_factory(copied_registry: dict[str, ZooModel]) -> None:
    def tiny_zoo_test_net() -> nn.Module:
        """Tiny test net."""
        return nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))

    decorated = register_zoo_model(
        "tiny_zoo_test_net", tags=("linear",), inputs=lambda b: torch.ones(b, 4)
    )(tiny_zoo_test_net)

    assert decorated is tiny_zoo_test_net
    entry = get_zoo_model("tiny_zoo_test_net")
    assert entry.tags == frozenset({"linear"})
    assert entry.description == "Tiny test net."
    assert not entry.build().training
    assert "tiny_zoo_test_net" in list_zoo(tags=["linear"])


def test_registration_does_not_leak_between_tests() -> None:
    assert "tiny_zoo_test_net" not in list_zoo()


def test_duplicate_name_raises_config_error(copied_registry: dict[str, ZooModel]) -> None:
    before = get_zoo_model("residual")
    with pytest.raises(ConfigError, match="'residual' is already registered"):
        register_zoo_model("residual", tags=["conv"], inputs=lambda b: torch.zeros(b, 3, 8, 8))
    assert get_zoo_model("residual") is before


def test_unknown_tag_raises_config_error(copied_registry: dict[str, ZooModel]) -> None:
    with pytest.raises(ConfigError, match="spaghetti") as info:
        register_zoo_model("zoo_test_bad_tag", tags=["conv", "spaghetti"], inputs=torch.zeros)
    assert "ZOO_TAGS" in str(info.value)
    assert "zoo_test_bad_tag" not in list_zoo()
