"""The ``torchslim`` command line. Thin: it parses, calls the library and prints tables."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from typing import Any

import torchslim
from torchslim.errors import ConfigError, TorchSlimError

__all__ = ["main"]

_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224" -> (1, 3, 224, 224)``; also accepts ``x`` as separator."""
    parts = text.split(",") if "," in text else text.split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(
            f"bad input shape {text!r}: give positive integers separated by commas, "
            "e.g. --input-shape 1,3,224,224"
        )
    return shape


def parse_kwargs(
    pairs: Sequence[str], what: str = "model argument", example: str = "-a num_classes=10"
) -> dict[str, Any]:
    """``["num_classes=10", "p=0.1"]`` -> ``{"num_classes": 10, "p": 0.1}`` (YAML values)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"bad {what} {pair!r}: use KEY=VALUE, e.g. {example}")
        out[key] = yaml.safe_load(value)
    return out


def parse_target(text: str, option: str = "--target-macs") -> float | int:
    """A pruning target: ``"0.5"`` -> ``0.5`` (a fraction of the original model's count);
    ``"2e9"`` or ``"2000000000"`` -> ``2000000000`` (an absolute count: values above 1 are ints).
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise ConfigError(
            f"bad {option} {text!r}: give a fraction of the original in (0, 1], e.g. 0.5, "
            "or an absolute count, e.g. 2e9"
        )
    if value <= 1:
        return value
    if value != int(value):
        raise ConfigError(
            f"bad {option} {text!r}: a value above 1 is an absolute count and must be whole; "
            "for a fraction of the original give a number in (0, 1], e.g. 0.5"
        )
    return int(value)


def _example_inputs(shapes: Sequence[str], dtype: str, model_spec: str) -> Any:
    import torch

    from torchslim.models import get_zoo_model

    if not shapes:
        head, _, name = model_spec.partition(":")
        if head == "torchslim":  # built-in models know their inputs
            return get_zoo_model(name).example_inputs(1)
        raise ConfigError("give the input shape, e.g. --input-shape 1,3,224,224")
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for text in shapes:
        shape = parse_shape(text)
        if dtype.startswith("int"):
            tensors.append(
                torch.randint(0, 2, shape, generator=generator, dtype=getattr(torch, dtype))
            )
        else:
            tensors.append(torch.randn(shape, generator=generator).to(getattr(torch, dtype)))
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def _cmd_profile(args: argparse.Namespace) -> int:
    from torchslim.models import build_on_meta, load_model
    from torchslim.profiling import profile

    kwargs = parse_kwargs(args.model_arg)
    inputs = _example_inputs(args.input_shape, args.input_dtype, args.model)
    device = args.device
    if device == "meta":
        if not args.no_latency:
            raise ConfigError(
                "the meta device runs nothing, so it has no latency; add --no-latency"
            )
        model = build_on_meta(lambda: load_model(args.model, **kwargs))
    else:
        model = load_model(args.model, **kwargs)
    try:
        result = profile(
            model,
            inputs,
            latency=not args.no_latency,
            backend=args.backend,
            device=device,
            threads=args.threads,
            warmup=args.warmup,
            runs=args.runs,
        )
    except (RuntimeError, ValueError, TypeError) as exc:
        if isinstance(exc, TorchSlimError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{args.model} failed on inputs of shape {args.input_shape or 'default'}: {first} "
            "(check --input-shape and --input-dtype)"
        ) from exc
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
        print()
        print(result.table(top=args.top, sort=args.sort))
    return 0


def _calibration_loader(args: argparse.Namespace, model: Any, criterion: Any) -> Any:
    """The ``--calibration`` dataset's training split as a shuffled, seeded DataLoader."""
    if not args.calibration:
        if criterion.requires_calibration:
            raise ConfigError(
                f"importance {args.importance!r} ranks channels on data: add --calibration "
                "DATASET (a torchslim.list_datasets() name), e.g. --calibration mnist5k "
                "--calibration-option size=32 --calibration-option channels=3"
            )
        if args.calibration_option:
            raise ConfigError("--calibration-option needs --calibration DATASET")
        return None
    import torch
    from torch.utils.data import DataLoader

    from torchslim._inputs import eval_mode
    from torchslim.data import load_dataset

    options = parse_kwargs(
        args.calibration_option, "calibration option", "--calibration-option size=32"
    )
    batch_size = options.pop("batch_size", 64)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"bad --calibration-option batch_size={batch_size!r}: give an integer >= 1"
        )
    data = load_dataset(args.calibration, "train", **options)
    x, _ = data[0]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x.unsqueeze(0))
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{args.model} failed on {args.calibration} inputs of shape {tuple(x.shape)}: "
            f"{first} (choose a dataset the model fits, or set its shape with "
            "--calibration-option, e.g. channels=1 or size=28)"
        ) from exc
    generator = torch.Generator().manual_seed(0)
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)


def _cmd_prune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from torchslim.importance import get_importance
    from torchslim.models import load_model, save
    from torchslim.pruning import prune_

    targets = {}
    if args.target_macs is not None:
        targets["target_macs"] = parse_target(args.target_macs, "--target-macs")
    if args.target_params is not None:
        targets["target_params"] = parse_target(args.target_params, "--target-params")
    criterion = get_importance(args.importance)
    kwargs = parse_kwargs(args.model_arg)
    inputs = _example_inputs(args.input_shape, args.input_dtype, args.model)
    model = load_model(args.model, **kwargs)
    out = Path(args.out)
    if (out / "model").exists() and not args.overwrite:
        raise ConfigError(f"{out / 'model'} exists; pass --overwrite or choose another --out")
    calibration = _calibration_loader(args, model, criterion)
    result = prune_(
        model,
        inputs,
        ratio=args.ratio,
        importance=args.importance,
        ignore=args.ignore,
        round_to=args.round_to,
        global_ranking=args.global_ranking,
        min_channels=args.min_channels,
        max_ratio=args.max_ratio,
        steps=args.steps,
        measure_latency=not args.no_latency,
        calibration=calibration,
        calibration_batches=args.calibration_batches if calibration is not None else None,
        **targets,
    )
    out.mkdir(parents=True, exist_ok=True)
    saved = save(model, out / "model", overwrite=args.overwrite)
    result.plan.to_json(out / "plan.json")
    report = {
        "model": args.model,
        "importance": args.importance,
        **targets,
        "steps": args.steps,
        "calibration": args.calibration,
        "before": result.before.to_dict(),
        "after": result.after.to_dict(),
        "skipped": [{"modules": list(m), "reason": r} for m, r in result.skipped],
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(result.table())
    for name, value in targets.items():
        kind = name.removeprefix("target_")
        before, after = getattr(result.before, kind), getattr(result.after, kind)
        goal = value * before if isinstance(value, float) else value
        print(
            f"target {kind}: {goal:,.0f}; reached {after:,} ({after / goal - 1:+.2%} of the "
            f"target, {after / before:.3f} of the original)"
        )
    for modules, reason in result.skipped:
        print(f"kept whole: {', '.join(m or '(root)' for m in modules[:4])}: {reason}")
    print(
        f"\nwrote {saved} (safetensors + JSON with the plan), {out / 'plan.json'}, "
        f"{out / 'report.json'}"
    )
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from torch.utils.data import DataLoader

    from torchslim._inputs import eval_mode
    from torchslim.data import load_dataset
    from torchslim.models import load_model, save
    from torchslim.train import _distributed, finetune

    out = Path(args.out)
    if (out / "model").exists() and not args.overwrite:
        raise ConfigError(f"{out / 'model'} exists; pass --overwrite or choose another --out")
    gpu = _distributed.init_from_env()  # under torchrun: join the process group
    model = load_model(args.model, **parse_kwargs(args.model_arg))
    teacher = load_model(args.teacher) if args.teacher else None
    options = parse_kwargs(args.dataset_arg)
    train = load_dataset(args.dataset, "train", seed=args.seed, **options)
    test = load_dataset(args.dataset, "test", seed=args.seed, **options)
    x, _ = train[0]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x.unsqueeze(0))
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{args.model} failed on {args.dataset} inputs of shape {tuple(x.shape)}: {first} "
            "(choose a dataset the model fits, or set its shape with -d, e.g. -d shape=[3,32,32])"
        ) from exc
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    result = finetune(
        model,
        DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=generator),
        teacher=teacher,
        eval_data=DataLoader(test, batch_size=args.batch_size),
        checkpoint_dir=args.checkpoint_dir,
        resume=not args.restart,
        device=args.device or gpu,
        progress=not args.no_progress,
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        kd_alpha=args.kd_alpha,
        kd_temperature=args.kd_temperature,
        batches_per_epoch=args.batches_per_epoch,
        checkpoint_every=args.checkpoint_every,
    )
    if _distributed.rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        saved = save(model, out / "model", overwrite=args.overwrite)
        result.to_json(out / "finetune.json")
        if result.resumed_from is not None:
            print(f"resumed from the checkpoint at step {result.resumed_from}")
        print(result.table())
        print(f"\nwrote {saved} (safetensors + JSON) and {out / 'finetune.json'}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from torchslim.export import export_onnx
    from torchslim.models import load_model

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite or choose another --out")
    inputs = _example_inputs(args.input_shape, args.input_dtype, args.model)
    model = load_model(args.model, **parse_kwargs(args.model_arg))
    try:
        result = export_onnx(
            model,
            inputs,
            out,
            opset=args.opset,
            dynamic_batch=not args.static_batch,
            verify=not args.no_verify,
            exporter=args.exporter,
            rtol=args.rtol,
            atol=args.atol,
        )
    except (RuntimeError, ValueError, TypeError) as exc:
        if isinstance(exc, TorchSlimError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{args.model} failed on inputs of shape {args.input_shape or 'default'}: {first} "
            "(check --input-shape and --input-dtype)"
        ) from exc
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from torchslim._demo_job import DemoConfig, run_demo

    given = {"epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "size": args.size}
    run_demo(
        DemoConfig(
            **{k: v for k, v in given.items() if v is not None},  # None: the config's default
            threads=args.threads,
            progress=not args.no_progress,
            out_dir=None if args.no_save else args.out,
        )
    )
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from torchslim.search import SearchConfig, run_config

    config = SearchConfig.load(args.config)
    given = {
        "storage": args.storage,
        "budget": args.budget,
        "workers": args.workers,
        "study_name": args.study_name,
        "seed": args.seed,
    }
    config = replace(config, **{k: v for k, v in given.items() if v is not None})
    run_dir = Path(args.run_dir or Path("runs") / "search" / Path(args.config).stem)
    result = run_config(
        config, run_dir=run_dir, progress=not args.no_progress, quiet=not args.verbose
    )
    print(result.table())
    print(
        f"\n{len(result.trials)} completed trials, {len(result.pareto)} on the front; wrote "
        f"pareto.json, pareto.csv, pareto.png, trials.csv and trials.json to {run_dir}"
    )
    return 0


_IMPORTANCE_HELP = "criterion (default: l2): {criteria}"


class _PruneHelpFormatter(argparse.HelpFormatter):
    """Lists the registered criteria in ``--importance``'s help, importing them (and torch) only
    when the help is shown."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and "{criteria}" in text:
            from torchslim.importance import list_importances

            text = text.replace("{criteria}", ", ".join(list_importances()))
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchslim",
        description="Make PyTorch models smaller and faster on the hardware they run on.",
    )
    parser.add_argument("--version", action="version", version=f"torchslim {torchslim.__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "profile",
        help="params, MACs, latency and memory of a model, per layer",
        description=(
            "Profile a model. MODEL is torchvision:NAME, timm:NAME, torchslim:NAME, "
            "path/to/file.py:factory, or a directory saved by torchslim.save."
        ),
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="SHAPE",
        help="e.g. 1,3,224,224; repeat for models with several inputs",
    )
    p.add_argument("--input-dtype", default="float32", choices=_DTYPES)
    p.add_argument(
        "-a",
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="constructor argument, e.g. -a num_classes=10",
    )
    p.add_argument("--backend", default="eager", help="latency backend (eager, compile, ...)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, or meta (counts only)")
    p.add_argument("--threads", type=int, default=None, help="pin the CPU thread count")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--no-latency", action="store_true", help="count params, MACs and memory only")
    p.add_argument("--top", type=int, default=None, help="show the N heaviest layers")
    p.add_argument("--sort", default=None, choices=("order", "macs", "params"))
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.set_defaults(func=_cmd_profile)

    r = sub.add_parser(
        "prune",
        formatter_class=_PruneHelpFormatter,
        help="structurally prune a model and save it with its plan",
        description="Prune a model: remove channels (coupled layers found automatically), save "
        "the pruned model (safetensors + JSON plan) and print a before/after table.",
    )
    r.add_argument("model", metavar="MODEL")
    r.add_argument("--input-shape", action="append", default=[], metavar="SHAPE")
    r.add_argument("--input-dtype", default="float32", choices=_DTYPES)
    r.add_argument("-a", "--model-arg", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument(
        "--ratio",
        type=float,
        default=0.5,
        help="fraction of each group's channels to remove (ignored with a target)",
    )
    target = r.add_mutually_exclusive_group()
    target.add_argument(
        "--target-macs",
        metavar="VALUE",
        help="prune until the model has this many MACs: a fraction of the original (0.5) or "
        "an absolute count (2e9); reached within 2%%",
    )
    target.add_argument(
        "--target-params",
        metavar="VALUE",
        help="the same for the parameter count",
    )
    r.add_argument(
        "--steps", type=int, default=1, help="reach the ratio or target in N steps (iterative)"
    )
    r.add_argument(
        "--max-ratio", type=float, default=None, help="never remove more of any group, in (0, 1)"
    )
    r.add_argument("--importance", default="l2", help=_IMPORTANCE_HELP)
    r.add_argument(
        "--calibration",
        metavar="DATASET",
        help="data for data-driven criteria: a torchslim.list_datasets() name (its train split)",
    )
    r.add_argument(
        "--calibration-batches",
        type=int,
        default=8,
        metavar="N",
        help="calibration batches to use (default: 8)",
    )
    r.add_argument(
        "--calibration-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. size=32, channels=3, normalize=imagenet, or batch_size=64 "
        "(default 64); repeatable",
    )
    r.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="PATTERN",
        help="module names to keep whole (exact, glob, or re:REGEX); repeatable",
    )
    r.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples")
    r.add_argument("--min-channels", type=int, default=1)
    r.add_argument(
        "--global-ranking",
        nargs="?",
        const="mean",
        default=False,
        choices=["mean", "max", "sum", "lamp", "none"],
        help="rank channels across groups, each group's scores scaled first: by their mean "
        "(the default), max or sum, by LAMP's transform (lamp), or not at all (none)",
    )
    r.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(func=_cmd_prune)

    f = sub.add_parser(
        "finetune",
        help="fine-tune a (pruned) model, distilling from a teacher, with resumable checkpoints",
        description="Fine-tune MODEL (e.g. a directory written by `torchslim prune`) on a "
        "dataset, optionally distilling from --teacher (the unpruned model), and save it. "
        "Under torchrun every process trains a share of each batch (DDP).",
    )
    f.add_argument("model", metavar="MODEL")
    f.add_argument("-a", "--model-arg", action="append", default=[], metavar="KEY=VALUE")
    f.add_argument("--teacher", metavar="SPEC", help="model to distil from (the unpruned one)")
    f.add_argument("--dataset", required=True, help="a dataset name (torchslim.list_datasets())")
    f.add_argument(
        "-d",
        "--dataset-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. -d num_samples=1000",
    )
    f.add_argument("--epochs", type=int, default=1)
    f.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    f.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    f.add_argument("--weight-decay", type=float, default=1e-4)
    f.add_argument("--warmup-steps", type=int, default=0)
    f.add_argument("--kd-alpha", type=float, default=0.5, help="weight of distillation, 0..1")
    f.add_argument("--kd-temperature", type=float, default=4.0)
    f.add_argument("--batch-size", type=int, default=64, help="per process under torchrun")
    f.add_argument("--batches-per-epoch", type=int, default=None)
    f.add_argument("--checkpoint-dir", default=None, help="write (and resume from) checkpoints")
    f.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS")
    f.add_argument("--restart", action="store_true", help="ignore a checkpoint; start over")
    f.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the model's)")
    f.add_argument("--seed", type=int, default=0, help="seeds the split and the data order")
    f.add_argument("--no-progress", action="store_true")
    f.add_argument("--out", required=True, help="output directory")
    f.add_argument("--overwrite", action="store_true")
    f.set_defaults(func=_cmd_finetune)

    x = sub.add_parser(
        "export",
        help="export a model to ONNX, verified against PyTorch in ONNX Runtime",
        description="Export MODEL (a spec or a directory saved by torchslim.save) to an ONNX "
        "file, check it, and compare ONNX Runtime with eager PyTorch on the example inputs and "
        "on random batches of other sizes; prints the largest difference per output.",
    )
    x.add_argument("model", metavar="MODEL_OR_SAVED")
    x.add_argument("--input-shape", action="append", default=[], metavar="SHAPE")
    x.add_argument("--input-dtype", default="float32", choices=_DTYPES)
    x.add_argument("-a", "--model-arg", action="append", default=[], metavar="KEY=VALUE")
    x.add_argument("--out", required=True, help="the .onnx file to write")
    x.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    x.add_argument("--exporter", default="auto", choices=("auto", "torchscript", "dynamo"))
    x.add_argument("--static-batch", action="store_true", help="fix the batch size in the graph")
    x.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime comparison")
    x.add_argument("--rtol", type=float, default=1e-3, help="tolerance, relative to max |output|")
    x.add_argument("--atol", type=float, default=1e-5)
    x.add_argument("--json", action="store_true", help="print the result as JSON")
    x.add_argument("--overwrite", action="store_true")
    x.set_defaults(func=_cmd_export)

    d = sub.add_parser(
        "demo",
        help="the main job: ImageNet MobileNetV2 -> MNIST digits, pruned to half the MACs",
        description="Fine-tune torchvision's ImageNet MobileNetV2 on 5,000 real MNIST digits, "
        "profile it, prune it to half the MACs (energy criterion), recover with distillation, "
        "and compare accuracy, params, MACs and latency. 1-2 minutes on 2 CPU cores.",
    )
    d.add_argument("--epochs", type=int, help="transfer fine-tuning epochs (default: 3)")
    d.add_argument(
        "--finetune-epochs", type=int, help="distillation epochs after pruning (default: 6)"
    )
    d.add_argument("--size", type=int, help="image size the digits are resized to (default: 32)")
    d.add_argument("--threads", type=int, default=None, help="pin the CPU thread count")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--out", default="runs/demo", help="where both models are saved")
    d.add_argument("--no-save", action="store_true", help="save nothing")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser(
        "search",
        help="architecture search from a YAML config; writes the Pareto front",
        description="Run the search CONFIG.yaml describes (see ts.search.SearchConfig) until "
        "its study holds BUDGET completed trials, then write pareto.json, pareto.csv, "
        "pareto.png, trials.csv and trials.json to the run directory. Rerunning the same "
        "command resumes the study; start it on several machines with one --storage "
        "postgresql://... URL to share one study.",
    )
    s.add_argument("config", metavar="CONFIG.yaml")
    s.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage URL (default: SQLite file study.db in the run directory)",
    )
    s.add_argument("--run-dir", metavar="DIR", help="default: runs/search/CONFIG_NAME")
    s.add_argument("--budget", type=int, metavar="N", help="completed trials of the study")
    s.add_argument("--workers", type=int, metavar="N", help="processes on this machine")
    s.add_argument("--study-name", metavar="NAME", help="the study's name in its storage")
    s.add_argument("--seed", type=int, metavar="N", help="sampler seed (one per worker)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_search)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "sort", None) is None and getattr(args, "top", None) is not None:
        args.sort = "macs"
    elif hasattr(args, "sort") and args.sort is None:
        args.sort = "order"
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except TorchSlimError as exc:
        if args.debug:
            raise
        print(f"torchslim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("torchslim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
