"""Zoo coverage: torchslim vs Torch-Pruning 1.6.1, structured pruning at ratio 0.5.

For every model of a zoo (random weights), each tool prunes 50% of the channels with its
L2-magnitude criterion. Each tool runs in its own long-lived worker subprocess, which builds and
prunes one model per request; the tools alternate model by model, one process running at a time.
Every request has a timeout, and every worker a memory cap (`RLIMIT_AS`); a worker that times out,
crashes or runs out of memory is killed, its model recorded as failed, and a fresh worker takes the
next model. A run succeeds when the pruned model runs and its output shape is unchanged. Reported
per tool: success rate, parameter and MAC reduction, and wall time of trace + prune (model
construction excluded). Each worker first prunes resnet18 once, untimed, so every model is timed in
a warm process: one-time costs (lazy imports, first-call initialisation) count for no model. (The
earlier runs, one fresh process per tool and model, counted them in every model's time.)

Zoos (`--zoo`): `torchvision` (classification), `timm` (96 models over its families),
`torchvision-seg` (segmentation: input (1, 3, 224, 224), FCN and DeepLabV3 built with their
auxiliary classifier; every output tensor must keep its shape) and `torchvision-det` (detection,
eval mode: input a list of one (3, 224, 224) image, `min_size`/`max_size` 224 where the model takes
them; the number of boxes varies with the weights, so only the output structure must be kept: the
keys, and each tensor's shape after its leading box count). Segmentation and detection models are
built with `weights_backbone=None` and their default number of classes. The MACs of a detection
model depend on how many proposals and boxes its heads see, which pruning changes: its MACs ratio
is indicative only (it can exceed 1); its parameter ratio is exact.

Torch-Pruning runs with the settings of its README and its torchvision benchmark script: a
`MetaPruner` with `GroupMagnitudeImportance(p=2)`, the 1000-class classifier in `ignored_layers`,
`num_heads` for `nn.MultiheadAttention` layers. It gets no hand patches after pruning. For
segmentation and detection its `ignored_layers` are the final predictor layers (the convolutions of
the classifier and auxiliary classifier that output the classes; the detectors' class-logit, box,
mask and keypoint predictors), which keeps their output channels; on detection models they also
hold what its torchvision script keeps whole (Faster R-CNN: the FPN and the RoI heads; Keypoint
R-CNN: the FPN's output convs and the RoI box head and predictors; Mask R-CNN: the RoI predictors;
SSD: the whole head), unless `--tp-heads-only`. torchslim keeps the predictors' outputs by default
(they feed the model's outputs); its `ignore` patterns would keep these layers whole, input
channels and every channel coupled to them included, which is stricter than Torch-Pruning's
`ignored_layers`, so it gets the predictor layers as `ignore` patterns only with
`--ts-ignore-heads`. For both tools a run on these zoos fails if a predictor layer lost output
channels.

    python benchmarks/zoo_coverage.py --threads 2 --out /tmp/zoo.jsonl
    python benchmarks/zoo_coverage.py --zoo torchvision-det --models ssdlite320_mobilenet_v3_large
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

TOOLS = ("torchslim", "torch-pruning")
ZOOS = ("torchvision", "timm", "torchvision-seg", "torchvision-det")

SIZES = {"inception_v3": 299, "googlenet": 224}
KWARGS = {
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "googlenet": {"aux_logits": False, "init_weights": False},
}
DENSE_SIZE = 224  # input size of the segmentation and detection models

# detection: leaf names of the final predictor layers (class logits, box regression, masks,
# keypoints), and the last convolution of each SSD head branch
DET_HEADS = {
    "cls_logits",
    "bbox_pred",
    "bbox_reg",
    "bbox_ctrness",
    "cls_score",
    "mask_fcn_logits",
    "kps_score_lowres",
}
SSD_HEAD = re.compile(r"head\.(classification|regression)_head\.module_list\.\d+(\.1)?")
# what Torch-Pruning's torchvision script (examples/torchvision_models) also keeps whole, by
# model-name prefix; siblings it does not list (maskrcnn v1) get the same
TP_KEEP = {
    "fasterrcnn": ("backbone.fpn", "roi_heads"),
    "keypointrcnn": (
        "backbone.fpn.layer_blocks",
        "roi_heads.box_head",
        "roi_heads.box_predictor",
        "roi_heads.keypoint_predictor",
    ),
    "maskrcnn": ("roi_heads.box_predictor", "roi_heads.mask_predictor"),
    "ssd": ("head",),
}


# timm: 96 models over its families (CNNs, ViTs and hybrids), small variants
TIMM = """resnet18 resnet50 resnet34d resnext26ts seresnext26d_32x4d efficientnet_b0
efficientnet_lite0 tf_efficientnetv2_b0 mobilenetv2_100 mobilenetv3_small_100 mobilenetv3_large_100
mobilenetv4_conv_small mobilenetv4_hybrid_medium convnext_atto convnext_tiny convnextv2_atto
regnetx_002 regnety_002 regnetz_b16 densenet121 ghostnet_100 ghostnetv2_100 repvgg_a0 repvit_m0_9
vit_tiny_patch16_224 vit_small_patch16_224 deit_tiny_patch16_224 deit3_small_patch16_224
swin_tiny_patch4_window7_224 swinv2_tiny_window8_256 maxvit_tiny_tf_224 maxxvit_rmlp_nano_rw_256
coatnet_nano_rw_224 coat_lite_tiny mobilevit_xxs mobilevitv2_050 levit_128s efficientformer_l1
efficientformerv2_s0 poolformer_s12 poolformerv2_s12 cait_xxs24_224 eva02_tiny_patch14_224
beit_base_patch16_224 crossvit_tiny_240 pit_ti_224 tnt_s_patch16_224 twins_svt_small
xcit_nano_12_p16_224 convit_tiny dla34 dpn68 hrnet_w18_small inception_v3 mixnet_s mnasnet_100
fbnetc_100 rexnet_100 lcnet_050 hardcorenas_a tinynet_e edgenext_xx_small fastvit_t8 gcvit_xxtiny
nfnet_l0 resnetv2_50 botnet26t_256 halonet26t sebotnet33ts_256 vovnet39a selecsls42b dm_nfnet_f0
cspresnet50 cspdarknet53 darknet53 hgnetv2_b0 inception_next_tiny focalnet_tiny_srf davit_tiny
pvt_v2_b0 mvitv2_tiny sequencer2d_s mixer_b16_224 resmlp_12_224 gmlp_ti16_224 convmixer_768_32
visformer_tiny volo_d1_224 nest_tiny efficientvit_b0 fastvit_sa12 tiny_vit_5m_224 rdnet_tiny
starnet_s1 vitamin_small_224 hiera_tiny_224""".split()


def model_names(zoo: str) -> list[str]:
    if zoo == "timm":
        return TIMM
    import torchvision

    module = {
        "torchvision": torchvision.models,
        "torchvision-seg": torchvision.models.segmentation,
        "torchvision-det": torchvision.models.detection,
    }[zoo]
    return torchvision.models.list_models(module=module)


def input_size(name: str, zoo: str = "torchvision") -> int:
    if zoo == "timm":
        import timm

        return timm.get_pretrained_cfg(name).input_size[-1]
    if zoo in ("torchvision-seg", "torchvision-det"):
        return DENSE_SIZE
    if name.startswith(("vit", "swin", "maxvit")):
        return 224
    return SIZES.get(name, 64)


def build(name: str, zoo: str = "torchvision"):
    import torch

    torch.manual_seed(0)
    if zoo == "timm":
        import timm

        return timm.create_model(name, pretrained=False).eval()
    import torchvision

    kwargs = dict(KWARGS.get(name, {}))
    if zoo in ("torchvision-seg", "torchvision-det"):
        kwargs["weights_backbone"] = None
    if zoo == "torchvision-seg" and name.startswith(("fcn", "deeplabv3")):
        kwargs["aux_loss"] = True  # the "aux" output and its classifier
    if zoo == "torchvision-det" and not name.startswith("ssd"):  # SSD has a fixed input size
        kwargs.update(min_size=DENSE_SIZE, max_size=DENSE_SIZE)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def example_args(name: str, zoo: str) -> tuple:
    """The positional arguments the model is called with."""
    import torch

    size = input_size(name, zoo)
    if zoo == "torchvision-det":
        return ([torch.rand(3, size, size)],)
    return (torch.randn(1, 3, size, size),)


def structure(out: Any, zoo: str) -> Any:
    """What must not change when pruning: tensor shapes, without the box count for detection."""
    import torch

    if isinstance(out, torch.Tensor):
        return tuple(out.shape[1:]) if zoo == "torchvision-det" else tuple(out.shape)
    if isinstance(out, dict):
        return {k: structure(v, zoo) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [structure(v, zoo) for v in out]
    return type(out).__name__


def head_layers(model, zoo: str, out: Any) -> list[str]:
    """Names of the final predictor layers of a segmentation or detection model."""
    import torch

    if zoo == "torchvision-seg":
        classes = out["out"].shape[1]
        return [
            n
            for n, m in model.named_modules()
            if n.split(".")[0] in ("classifier", "aux_classifier")
            and isinstance(m, torch.nn.Conv2d)
            and m.out_channels == classes
        ]
    if zoo == "torchvision-det":
        layers = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)
        return [
            n
            for n, m in model.named_modules()
            if isinstance(m, layers)
            and (n.rsplit(".", 1)[-1] in DET_HEADS or SSD_HEAD.fullmatch(n) is not None)
        ]
    return []


def out_width(layer) -> int:
    """Output channels of a conv, transposed conv or linear layer, from its weight."""
    import torch

    if isinstance(layer, torch.nn.ConvTranspose2d):
        return layer.weight.shape[1] * layer.groups
    return layer.weight.shape[0]


def measure(tool: str, name: str, zoo: str = "torchvision", options: tuple[str, ...] = ()) -> dict:
    """Build ``name``, prune it with ``tool`` and return its ratios and trace + prune time.

    ``options``: ``"ts-ignore-heads"``, ``"tp-heads-only"`` (see the command-line flags)."""
    import torch

    from torchslim._inputs import as_inputs
    from torchslim.profiling import count_macs

    model = build(name, zoo)
    args = example_args(name, zoo)
    example = args if zoo == "torchvision-det" else args[0]  # the list is one positional input
    with torch.no_grad():
        out = model(*args)
    shape = structure(out, zoo)
    heads = head_layers(model, zoo, out)
    widths = {n: out_width(model.get_submodule(n)) for n in heads}
    del out
    params0 = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        macs0 = count_macs(model, as_inputs(example))[0]
    start = time.perf_counter()
    if tool == "torchslim":
        import torchslim as ts

        ts.prune_(model, example, ratio=0.5, ignore=heads if "ts-ignore-heads" in options else ())
    else:
        import torch_pruning as tp

        ignored = [
            m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000
        ]
        if hasattr(model, "get_classifier"):  # timm, as in Torch-Pruning's timm example
            ignored.append(model.get_classifier())
        ignored += [model.get_submodule(n) for n in heads]
        if zoo == "torchvision-det" and "tp-heads-only" not in options:
            keep = next((v for k, v in TP_KEEP.items() if name.startswith(k)), ())
            ignored += [model.get_submodule(n) for n in keep]
        num_heads = {
            m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)
        }
        for m in model.modules():  # timm attention blocks
            if hasattr(m, "qkv") and hasattr(m, "num_heads"):
                num_heads[m.qkv] = m.num_heads
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.5,
            ignored_layers=ignored,
            num_heads=num_heads,
        )
        pruner.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        out_shape = structure(model(*args), zoo)
        macs1 = count_macs(model, as_inputs(example))[0]
    if out_shape != shape:
        raise RuntimeError(f"output shape changed from {shape} to {out_shape}")
    for n, width in widths.items():
        if out_width(model.get_submodule(n)) != width:
            raise RuntimeError(f"predictor {n} lost output channels")
    params1 = sum(p.numel() for p in model.parameters())
    return {"params_ratio": params1 / params0, "macs_ratio": macs1 / macs0, "seconds": seconds}


def serve(tool: str, threads: int, zoo: str, mem_gb: float, options: tuple[str, ...]) -> None:
    """Worker loop: one JSON request ``{"model": name}`` per stdin line, one JSON result per
    stdout line. Everything else written to stdout (by Python or C code) goes to stderr."""
    import gc
    import resource
    import traceback
    import warnings

    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import torch
    import torchvision  # noqa: F401

    if zoo == "timm":
        import timm  # noqa: F401
    if tool == "torchslim":
        import torchslim  # noqa: F401
    else:
        import torch_pruning  # noqa: F401
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    try:  # untimed warm-up, so that no model pays the tool's one-time costs
        measure(tool, "resnet18", "torchvision")
    except Exception:  # noqa: BLE001 - the real requests will report it
        traceback.print_exc()

    def answer(result: dict) -> None:
        answers.write(json.dumps(result) + "\n")
        answers.flush()

    answer({"ready": True})
    for line in sys.stdin:
        name = json.loads(line)["model"]
        print(f"[{tool}] {name}", file=sys.stderr, flush=True)
        try:
            result = {"ok": True, **measure(tool, name, zoo, options)}
        except Exception as e:  # noqa: BLE001 - any failure is a result
            traceback.print_exc()
            message = " ".join(str(e).split())
            if isinstance(e, MemoryError) or "can't allocate memory" in message:
                error = f"memory > {mem_gb:g} GB: {type(e).__name__}: {message}"
            else:
                error = f"{type(e).__name__}: {message}"
            result = {"ok": False, "error": error[:300]}
        answer(result)
        gc.collect()


class Worker:
    """Parent side of one tool's worker subprocess."""

    def __init__(self, tool: str, threads: int, zoo: str, mem_gb: float, extra: list[str]) -> None:
        cmd = [sys.executable, __file__, "--worker", tool, "--threads", str(threads)]
        cmd += ["--zoo", zoo, "--mem-gb", str(mem_gb), *extra]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.log = tempfile.TemporaryFile()  # the worker's stderr
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env
        )
        self.buffer = b""
        self.ready = False

    def _log_size(self) -> int:
        return os.fstat(self.log.fileno()).st_size

    def _log_tail(self, since: int, lines: int = 3) -> str:
        size = self._log_size()
        text = os.pread(self.log.fileno(), size - since, since).decode(errors="replace")
        tail = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "?"

    def _read_line(self, timeout: float) -> tuple[dict | None, str]:
        """The next answer, or ``None`` and why none came (timeout or crash)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, f"timeout after {timeout:g} s"
            if select.select([fd], [], [], min(left, 1.0))[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:  # the worker closed stdout: it died
                    return None, f"crash (exit code {self.proc.wait()})"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line), ""

    def request(self, name: str, timeout: float) -> tuple[dict, bool]:
        """Prune ``name`` in the worker: (row fields, whether the worker is still usable)."""
        since = 0 if not self.ready else self._log_size()
        if not self.ready:  # startup: imports and the warm-up
            answer, why = self._read_line(max(timeout, 300))
            if answer is None:
                error = f"{why} at worker start: {self._log_tail(0)}"
                return {"ok": False, "error": error[:300]}, False
            self.ready = True
        try:
            self.proc.stdin.write(json.dumps({"model": name}).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            why = f"crash (exit code {self.proc.wait()})"
            return {"ok": False, "error": f"{why}: {self._log_tail(since)}"[:300]}, False
        answer, why = self._read_line(timeout)
        if answer is None:
            return {"ok": False, "error": f"{why}: {self._log_tail(since)}"[:300]}, False
        alive = not answer.get("error", "").startswith("memory")
        return answer, alive

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", metavar="TOOL", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model")
    parser.add_argument("--mem-gb", type=float, default=16, help="address-space cap per worker")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--zoo", choices=ZOOS, default="torchvision")
    parser.add_argument("--out", default=None, help="append JSON lines here")
    parser.add_argument(
        "--ts-ignore-heads",
        action="store_true",
        help="seg/det: also pass the predictor layers to torchslim as ignore patterns",
    )
    parser.add_argument(
        "--tp-heads-only",
        action="store_true",
        help="det: Torch-Pruning ignores only the predictor layers, not its script's extra modules",
    )
    args = parser.parse_args()
    flags = [f for f in ("ts-ignore-heads", "tp-heads-only") if getattr(args, f.replace("-", "_"))]
    if args.worker:
        serve(args.worker, args.threads, args.zoo, args.mem_gb, tuple(flags))
        return
    extra = [f"--{f}" for f in flags]
    names = args.models or model_names(args.zoo)
    rows = []
    workers: dict[str, Worker] = {}
    restarts = dict.fromkeys(TOOLS, 0)
    try:
        for name in names:
            for tool in TOOLS:
                if tool not in workers:
                    workers[tool] = Worker(tool, args.threads, args.zoo, args.mem_gb, extra)
                answer, alive = workers[tool].request(name, args.timeout)
                if not alive:
                    workers.pop(tool).close()
                    restarts[tool] += 1
                row = {"tool": tool, "model": name, **answer}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
    finally:
        for w in workers.values():
            w.close()
    summarise(rows, len(names), args.threads, args.zoo, restarts)


def summarise(
    rows: list[dict], n: int, threads: int, zoo: str, restarts: dict[str, int] | None = None
) -> None:
    print(f"\n{n} {zoo} models, ratio 0.5, threads={threads}")
    by = {t: {r["model"]: r for r in rows if r["tool"] == t} for t in TOOLS}
    for tool, got in by.items():
        ok = [r for r in got.values() if r["ok"]]
        if ok:
            print(
                f"{tool:14s} success {len(ok)}/{n}; median params ratio "
                f"{statistics.median(r['params_ratio'] for r in ok):.3f}, MACs ratio "
                f"{statistics.median(r['macs_ratio'] for r in ok):.3f}; total time "
                f"{sum(r['seconds'] for r in ok):.1f} s"
            )
        else:
            print(f"{tool:14s} success 0/{n}")
        for r in got.values():
            if not r["ok"]:
                print(f"    failed: {r['model']}: {r['error']}")
    both = [
        m
        for m in by["torchslim"]
        if by["torchslim"][m]["ok"] and by["torch-pruning"].get(m, {}).get("ok")
    ]
    ts_total = sum(by["torchslim"][m]["seconds"] for m in both)
    tp_total = sum(by["torch-pruning"][m]["seconds"] for m in both)
    ratio = f"{ts_total / tp_total:.2f}" if tp_total else "n/a"
    print(
        f"on the {len(both)} models both prune: total time torchslim {ts_total:.1f} s, "
        f"Torch-Pruning {tp_total:.1f} s, ratio torchslim/Torch-Pruning {ratio}"
    )
    if restarts is not None:
        detail = ", ".join(f"{t} {k}" for t, k in restarts.items())
        print(f"worker_restarts {sum(restarts.values())} ({detail})")


if __name__ == "__main__":
    main()
