"""The widths and depth of a trained model as a search space (``"width"``).

One categorical parameter per prunable group of coupled channels that ``ts.trace`` finds
(``keep/<group>``: the share of the group's channels kept, from ``choices``), and one boolean per
removable residual block (``drop/<block>``, found by :func:`find_residual_blocks`). A group is
named after its first module, e.g. ``keep/features.2.conv.0.0`` (``#2`` is appended when two
groups start at the same module); ``share=`` ties groups to one parameter.

A candidate inherits the trained weights: a copy of the model loses its dropped blocks (replaced
by ``nn.Identity``), then every group keeps its most important channels under ``importance``
(any criterion; data-driven ones get ``calibration_batches`` training batches), then batch-norm
statistics are re-estimated on ``bn_batches`` training batches and, with ``finetune_batches``, it
is briefly distilled from the original. Every candidate sees the same batches.

:meth:`WidthSpace.materialize` returns the candidate as a deployable model with what was done
to it; ``ts.save(model, path)`` records the block removal and the pruning plan, so
``ts.load(path)`` rebuilds it from the original's spec. From YAML the space takes plain options:
``model`` is a spec (``torchvision:resnet18``, a ``ts.save`` directory such as the demo's
``runs/demo/transfer``, …) and ``data`` a dataset name, and ``train_epochs`` trains an untrained
spec first (cached in ``train_cache``), so an example runs from a clean checkout. A trial of a
finished search becomes a model to fine-tune and export with::

    space = ts.search.get_search_space("width", **options)  # the space options of the search
    model, done = space.materialize(result.best("accuracy").config)
    ts.save(model, "runs/search/demo/best")
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._inputs import as_inputs
from torchslim._patterns import first_match, matches_any
from torchslim.errors import ConfigError
from torchslim.search._blocks import BlockRemovalPlan, find_residual_blocks, remove_blocks_
from torchslim.search._space import SearchSpace, register_search_space

__all__ = ["WidthSpace", "WidthCandidate"]

_logger = logging.getLogger(__name__)

_FINETUNE = {"lr": 1e-3, "kd_alpha": 0.5, "kd_temperature": 4.0}
_TRAIN = {"lr": 1e-3, "warmup_steps": 20}


@dataclass(frozen=True)
class WidthCandidate:
    """What :meth:`WidthSpace.materialize` did to the copy of the model.

    Attributes:
        config: The candidate's config (every group's keep ratio, the dropped blocks).
        blocks: The block removal applied, or ``None``.
        plan: The pruning plan applied, or ``None`` (nothing to prune).
        skipped: Groups kept whole because pruning them broke the model (modules, reason).
        recalibrated: Batches that re-estimated batch-norm statistics (0: none).
        finetuned: Fine-tuning steps (0: none).
    """

    config: dict[str, Any]
    blocks: BlockRemovalPlan | None
    plan: Any
    skipped: tuple[tuple[tuple[str, ...], str], ...] = ()
    recalibrated: int = 0
    finetuned: int = 0

    @property
    def changed(self) -> bool:
        """Whether the candidate differs from the original model at all."""
        return self.blocks is not None or self.plan is not None


def _group_names(groups: Sequence[Any]) -> list[str]:
    """A readable, stable name per group: its first module (and dimension when not 0)."""
    names, seen = [], {}
    for group in groups:
        lead = group.members[0]
        name = (lead.module or "(root)") + (f":{lead.dim}" if lead.dim else "")
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names


def _check_choices(choices: Sequence[float]) -> tuple[float, ...]:
    if isinstance(choices, (str, bytes)) or not choices:
        raise ConfigError(f"choices must be a non-empty list of keep ratios, got {choices!r}")
    for c in choices:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
            raise ConfigError(
                f"keep ratio {c!r} in choices must be a number in (0, 1], e.g. "
                "choices=[0.25, 0.5, 0.75, 1.0]"
            )
    return tuple(float(c) for c in dict.fromkeys(choices))


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@register_search_space("width")
class WidthSpace(SearchSpace):
    """Per-group channel keep ratios and removable residual blocks of a trained model.

    Args:
        model: The trained model, or a spec that :func:`ts.load_model` builds (a saved model
            directory, ``torchvision:NAME``, ``file.py:factory``, …).
        example_inputs: A tensor (or tuple/dict) the model runs on, or a shape such as
            ``[1, 3, 32, 32]`` (a seeded random tensor). Default: the first training sample.
        model_options: Keyword arguments for the spec (e.g. ``num_classes: 10``).
        data: Training data for calibration, batch-norm recalibration, fine-tuning and
            ``train_epochs``: a dataset name (``ts.load_dataset(data, "train", **data_options)``),
            a map-style dataset, or a DataLoader / iterable of ``(inputs, targets)`` batches.
        data_options: Options of the named dataset (e.g. ``size: 32, channels: 3``).
        choices: The keep ratios each group may take.
        importance: Which channels a group keeps: any criterion name or instance.
        calibration_batches: Batches a data-driven criterion sees.
        round_to: Keep channel counts multiples of this (ONNX Runtime's CPU kernels run widths
            that are multiples of 8 or 16 much faster).
        min_channels: Never keep fewer channels than this in a group.
        ignore: Module-name patterns kept whole and never dropped.
        blocks: Search removable residual blocks: ``True`` (all found), ``False``, or a list of
            module-name patterns restricting them.
        share: Tie groups to one parameter: ``"all"`` (one keep ratio for every group: uniform
            pruning), or ``{pattern: tie name}`` matched against group names, first pattern
            wins; other groups keep their own parameter.
        bn_batches: Batches that re-estimate batch-norm statistics of a changed candidate
            (0: none).
        finetune_batches: Distillation steps from the original after that (0: none).
        finetune_options: Options of ``ts.finetune`` for them (default lr 1e-3, kd_alpha 0.5,
            kd_temperature 4).
        batch_size: Batch size of a named dataset's loader.
        seed: Seeds the data order (and so which batches every candidate sees).
        train_epochs: Train the model first for this many epochs on ``data`` (for a spec that
            is not trained for the task yet); 0: use it as it is.
        train_options: Options of ``ts.finetune`` for that training (default lr 1e-3).
        train_cache: Directory where the trained model is saved and, on later runs with the same
            options, loaded from instead of training again.
    """

    def __init__(
        self,
        model: str | nn.Module,
        example_inputs: Any = None,
        *,
        model_options: Mapping[str, Any] | None = None,
        data: Any = None,
        data_options: Mapping[str, Any] | None = None,
        choices: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
        importance: Any = "l2",
        calibration_batches: int = 4,
        round_to: int | None = None,
        min_channels: int = 1,
        ignore: Sequence[str] = (),
        blocks: bool | Sequence[str] = True,
        share: str | Mapping[str, str] | None = None,
        bn_batches: int = 8,
        finetune_batches: int = 0,
        finetune_options: Mapping[str, Any] | None = None,
        batch_size: int = 64,
        seed: int = 0,
        train_epochs: int = 0,
        train_options: Mapping[str, Any] | None = None,
        train_cache: str | None = None,
    ) -> None:
        from torchslim.graph import trace
        from torchslim.importance import get_importance

        self._options = {
            k: v
            for k, v in dict(
                model=model,
                example_inputs=example_inputs,
                model_options=dict(model_options or {}),
                data=data,
                data_options=dict(data_options or {}),
                choices=list(choices),
                importance=importance,
                calibration_batches=calibration_batches,
                round_to=round_to,
                min_channels=min_channels,
                ignore=list(ignore),
                blocks=blocks if isinstance(blocks, bool) else list(blocks),
                share=share if not isinstance(share, Mapping) else dict(share),
                bn_batches=bn_batches,
                finetune_batches=finetune_batches,
                finetune_options=dict(finetune_options or {}),
                batch_size=batch_size,
                seed=seed,
                train_epochs=train_epochs,
                train_options=dict(train_options or {}),
                train_cache=train_cache,
            ).items()
            if _plain(v)
        }
        self.choices = _check_choices(choices)
        self.importance = importance
        self.criterion = get_importance(importance)
        self.calibration_batches = _count("calibration_batches", calibration_batches, 1)
        if round_to is not None:
            _count("round_to", round_to, 1)
        self.round_to = round_to
        self.min_channels = _count("min_channels", min_channels, 1)
        self.ignore = tuple(ignore)
        self.bn_batches = _count("bn_batches", bn_batches, 0)
        self.finetune_batches = _count("finetune_batches", finetune_batches, 0)
        self.finetune_options = {**_FINETUNE, **(finetune_options or {})}
        self.batch_size = _count("batch_size", batch_size, 1)
        self.seed = seed
        self.data_name = data if isinstance(data, str) else None
        self.data_options = dict(data_options or {})
        self.train_data = self._training_data(data)
        fixed = max(self.bn_batches, self.calibration_batches if self._calibrated() else 0)
        self.batches = list(itertools.islice(self._loader(), fixed)) if fixed else []
        if self.criterion.requires_calibration and not self.batches:
            raise ConfigError(
                f"importance {importance!r} ranks channels on data: pass data= (a dataset name, "
                "a dataset or a DataLoader) to the width space"
            )
        if self.train_data is None:
            if self.finetune_batches:
                raise ConfigError("finetune_batches needs data= to fine-tune on")
            _logger.info("no data= given: candidates keep the original's batch-norm statistics")
        self.model = self._base_model(
            model, model_options, train_epochs, train_options, train_cache
        )
        self.model.eval()
        self._inputs = self._example(example_inputs)
        graph = trace(self.model, self._inputs, ignore=self.ignore)
        groups = graph.groups()
        self.groups = _group_names(groups)
        self.group_sizes = {n: len(g) for n, g in zip(self.groups, groups, strict=True)}
        self._leaders = {}  # (tensor, dim) of each group's first member -> group name
        owners: dict[tuple[str, int], set[str]] = {}
        for name, group in zip(self.groups, groups, strict=True):
            self._leaders.setdefault((group.members[0].tensor, group.members[0].dim), name)
            for m in group.members:
                owners.setdefault((m.tensor, m.dim), set()).add(name)
        # members that belong to one group only: how a group of a changed model finds its name
        self._owners = {k: next(iter(v)) for k, v in owners.items() if len(v) == 1}
        self.ties = self._ties(share)
        found = []
        if blocks is not False:
            found = find_residual_blocks(self.model, self._inputs, ignore=self.ignore)
            if blocks is not True:
                patterns = [blocks] if isinstance(blocks, str) else list(blocks)
                found = [b for b in found if matches_any(b, patterns)]
        self.blocks = tuple(found)
        _logger.info(
            "width space of %s: %d groups (%d parameters), %d removable blocks",
            type(self.model).__name__,
            len(self.groups),
            len(set(self.ties.values())),
            len(self.blocks),
        )

    # -- construction -------------------------------------------------------------------------

    def _calibrated(self) -> bool:
        return bool(self.criterion.requires_calibration)

    def _training_data(self, data: Any) -> Any:
        if data is None:
            return None
        if isinstance(data, str):
            from torchslim.data import load_dataset

            return load_dataset(data, "train", **self.data_options)
        return data

    def _loader(self) -> Iterable[Any]:
        """Training batches in the space's fixed (seeded) order."""
        data = self.train_data
        if data is None:
            return iter(())
        if isinstance(data, torch.utils.data.Dataset) and not isinstance(
            data, torch.utils.data.IterableDataset
        ):
            generator = torch.Generator().manual_seed(self.seed)
            return torch.utils.data.DataLoader(
                data, self.batch_size, shuffle=True, drop_last=True, generator=generator
            )
        return data

    def _cycled(self, count: int) -> list[Any]:
        """``count`` training batches in the fixed order, repeating the data when it runs out."""
        out: list[Any] = []
        while len(out) < count:
            before = len(out)
            out.extend(itertools.islice(self._loader(), count - len(out)))
            if len(out) == before:
                raise ConfigError("the width space's data= yielded no batch")
        return out

    def _example(self, example_inputs: Any) -> Any:
        if example_inputs is None:
            if self.train_data is None:
                raise ConfigError(
                    "the width space needs example_inputs= (a tensor or a shape such as "
                    "[1, 3, 32, 32]) or data= to take the first training sample from"
                )
            batch = next(iter(self._loader()))
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            return as_inputs(x[:1].clone())
        if isinstance(example_inputs, (list, tuple)) and all(
            isinstance(d, int) and not isinstance(d, bool) for d in example_inputs
        ):
            generator = torch.Generator().manual_seed(self.seed)
            return as_inputs(torch.randn(*example_inputs, generator=generator))
        return as_inputs(example_inputs)

    def _base_model(
        self,
        model: Any,
        model_options: Mapping[str, Any] | None,
        train_epochs: int,
        train_options: Mapping[str, Any] | None,
        cache: str | None,
    ) -> nn.Module:
        from torchslim.models import is_saved_model, load, load_model, save

        _count("train_epochs", train_epochs, 0)
        if isinstance(model, nn.Module):
            if model_options:
                raise ConfigError("model_options apply to a model spec, not to a model instance")
            if not train_epochs:
                return model
            # trained as a copy: the caller's model stays as it was
            return self._train(_copy(model), train_epochs, {**_TRAIN, **(train_options or {})})
        if isinstance(model, (str, Path)):
            settings = {
                "model": str(model),
                "model_options": dict(model_options or {}),
                "data": self.data_name,
                "data_options": self.data_options,
                "train_epochs": train_epochs,
                "train_options": {**_TRAIN, **(train_options or {})},
                "batch_size": self.batch_size,
                "seed": self.seed,
            }
            if train_epochs and cache is not None and is_saved_model(cache):
                import json

                record = json.loads((Path(cache) / "torchslim.json").read_text())
                if record.get("metadata", {}).get("width_space_training") == settings:
                    _logger.info("loading the trained model from %s", cache)
                    return load(cache)
                _logger.warning("%s was trained with other settings: training again", cache)
            net = load_model(model, **(model_options or {}))
            if train_epochs:
                net = self._train(net, train_epochs, settings["train_options"])
                if cache is not None:
                    meta = {"width_space_training": settings}
                    save(net, cache, metadata=meta, overwrite=True)
            return net
        raise ConfigError(
            f"model must be a torch.nn.Module or a model spec string, got {type(model).__name__}"
        )

    def _train(self, net: nn.Module, epochs: int, options: Mapping[str, Any]) -> nn.Module:
        from torchslim.train import finetune

        if self.train_data is None:
            raise ConfigError("train_epochs needs data= to train on")
        _logger.info("training %s for %d epochs before the search", type(net).__name__, epochs)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            finetune(net, self._loader(), epochs=epochs, **options)
        return net.eval()

    def _ties(self, share: Any) -> dict[str, str]:
        """Group name -> the parameter (tie) name it takes."""
        if share is None:
            return {n: n for n in self.groups}
        if share == "all":
            return {n: "all" for n in self.groups}
        if not isinstance(share, Mapping):
            raise ConfigError(
                f"share must be None, 'all' or a mapping {{pattern: tie name}}, got {share!r}"
            )
        ties = {}
        for name in self.groups:
            pattern = first_match([name], share)
            ties[name] = name if pattern is None else str(share[pattern])
        return ties

    # -- the SearchSpace interface --------------------------------------------------------------

    def suggest(self, trial: Any) -> dict[str, Any]:
        chosen = {}
        for tie in dict.fromkeys(self.ties.values()):
            chosen[tie] = trial.suggest_categorical(f"keep/{tie}", list(self.choices))
        drop = [b for b in self.blocks if trial.suggest_categorical(f"drop/{b}", [False, True])]
        return {"keep": {n: chosen[self.ties[n]] for n in self.groups}, "drop": drop}

    def example_inputs(self) -> Any:
        inputs = self._inputs
        return inputs.args[0] if len(inputs.args) == 1 and not inputs.kwargs else inputs

    def options(self) -> dict[str, Any]:
        return copy.deepcopy(self._options)

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        return self.materialize(config)[0]

    def materialize(self, config: Mapping[str, Any]) -> tuple[nn.Module, WidthCandidate]:
        """The candidate of ``config`` as a model that inherits the trained weights, and what
        was done to it. ``ts.save(model, path)`` stores it with its plans (the model keeps the
        original's spec and history), ready for fine-tuning and export.

        ``config["keep"]`` maps group names to keep ratios (groups not listed keep every
        channel); ``config["drop"]`` lists blocks to remove."""
        from torchslim.pruning import prune_
        from torchslim.train import finetune, recalibrate_bn

        keep, drop = self._check(config)
        net = _copy(self.model)
        removal = remove_blocks_(net, drop, options={"space": "width"}) if drop else None
        result = None
        if any(k < 1 for k in keep.values()):

            def ratio(group: Any) -> float | None:
                name = self._name_of(group)
                kept = keep.get(name, 1.0) if name is not None else 1.0
                return None if kept >= 1 else 1.0 - kept

            data = {}
            if self._calibrated():
                data = dict(
                    calibration=self.batches[: self.calibration_batches],
                    calibration_batches=self.calibration_batches,
                )
            result = prune_(
                net,
                self._inputs,
                group_ratios=ratio,
                importance=self.importance,
                round_to=self.round_to,
                min_channels=self.min_channels,
                ignore=self.ignore,
                **data,
            )
            if not result.plan.kept:
                result = None
        recalibrated = finetuned = 0
        if (removal is not None or result is not None) and self.train_data is not None:
            if self.bn_batches and self.batches:
                recalibrated = recalibrate_bn(net, self.batches, batches=self.bn_batches)
            if self.finetune_batches:
                with torch.random.fork_rng():  # dropout: the same stream for every candidate
                    torch.manual_seed(self.seed)
                    finetune(
                        net,
                        self._cycled(self.finetune_batches),
                        teacher=self.model,
                        epochs=1,
                        **self.finetune_options,
                    )
                finetuned = self.finetune_batches
        net.eval()
        candidate = WidthCandidate(
            config={"keep": keep, "drop": list(drop)},
            blocks=removal,
            plan=None if result is None else result.plan,
            skipped=() if result is None else result.skipped,
            recalibrated=recalibrated,
            finetuned=finetuned,
        )
        return net, candidate

    def _check(self, config: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
        if not isinstance(config, Mapping):
            raise ConfigError(f"a width config is a mapping with keep and drop, got {config!r}")
        unknown = sorted(set(config) - {"keep", "drop"})
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in a width config; known: keep, drop")
        keep = dict(config.get("keep") or {})
        for name, value in keep.items():
            if name not in self.group_sizes:
                raise ConfigError(
                    f"no group named {name!r} in this width space; its groups: "
                    f"{', '.join(self.groups[:8])}{', …' if len(self.groups) > 8 else ''}"
                )
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ConfigError(f"keep ratio of {name!r} must be in (0, 1], got {value!r}")
        drop = list(config.get("drop") or [])
        bad = [b for b in drop if b not in self.blocks]
        if bad:
            raise ConfigError(
                f"{bad[0]!r} is not a removable block of this width space; removable: "
                f"{', '.join(self.blocks) or 'none'}"
            )
        return {n: float(keep.get(n, 1.0)) for n in self.groups}, drop

    def _name_of(self, group: Any) -> str | None:
        """The base model's group that a group of a changed copy comes from."""
        lead = group.members[0]
        name = self._leaders.get((lead.tensor, lead.dim))
        if name is not None:
            return name
        for m in group.members:
            name = self._owners.get((m.tensor, m.dim))
            if name is not None:
                return name
        return None


def _plain(value: Any) -> bool:
    """Whether ``value`` is plain data (what ``options()`` reports and YAML holds)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy that keeps what ``ts.save`` needs: the model's spec and its history."""
    from torchslim.models._history import record_transform, transforms
    from torchslim.models._sources import _PROVENANCE, provenance

    net = copy.deepcopy(model)
    known = provenance(model)
    if known is not None:
        _PROVENANCE[net] = (known[0], dict(known[1]))
    for kind, plan in transforms(model):
        record_transform(net, kind, plan)
    return net


# the evaluator registers itself with the space
from torchslim.search._width_eval import WidthEvaluator  # noqa: E402

__all__ += ["WidthEvaluator"]
