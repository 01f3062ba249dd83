"""Zoo coverage: torchslim vs Torch-Pruning 1.6.1, structured pruning at ratio 0.5.

For every torchvision classification model (random weights), each tool prunes 50% of the channels
with its L2-magnitude criterion, in a fresh subprocess per (tool, model) with a timeout and a
memory cap, one at a time. A run succeeds when the pruned model runs and its output shape is
unchanged. Reported per tool: success rate, parameter and MAC reduction, and wall time of trace +
prune (model construction excluded).

Torch-Pruning runs with the settings of its README and its torchvision benchmark script: a
`MetaPruner` with `GroupMagnitudeImportance(p=2)`, the 1000-class classifier in `ignored_layers`,
`num_heads` for `nn.MultiheadAttention` layers. It gets no hand patches after pruning.

    python benchmarks/zoo_coverage.py --threads 2 --out /tmp/zoo.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIZES = {"inception_v3": 299, "googlenet": 224}
KWARGS = {
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "googlenet": {"aux_logits": False, "init_weights": False},
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


def input_size(name: str, zoo: str = "torchvision") -> int:
    if zoo == "timm":
        import timm

        return timm.get_pretrained_cfg(name).input_size[-1]
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
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def worker(tool: str, name: str, threads: int, zoo: str = "torchvision") -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    model = build(name, zoo)
    size = input_size(name, zoo)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        shape = tuple(model(x).shape)
    params0 = sum(p.numel() for p in model.parameters())
    from torchslim._inputs import as_inputs
    from torchslim.profiling import count_macs

    with torch.no_grad():
        macs0 = count_macs(model, as_inputs(x))[0]
    start = time.perf_counter()
    if tool == "torchslim":
        import torchslim as ts

        ts.prune_(model, x, ratio=0.5)
    else:
        import torch_pruning as tp

        ignored = [
            m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000
        ]
        if hasattr(model, "get_classifier"):  # timm, as in Torch-Pruning's timm example
            ignored.append(model.get_classifier())
        num_heads = {
            m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)
        }
        for m in model.modules():  # timm attention blocks
            if hasattr(m, "qkv") and hasattr(m, "num_heads"):
                num_heads[m.qkv] = m.num_heads
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.5,
            ignored_layers=ignored,
            num_heads=num_heads,
        )
        pruner.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        out_shape = tuple(model(x).shape)
        macs1 = count_macs(model, as_inputs(x))[0]
    if out_shape != shape:
        raise RuntimeError(f"output shape changed from {shape} to {out_shape}")
    params1 = sum(p.numel() for p in model.parameters())
    return {"params_ratio": params1 / params0, "macs_ratio": macs1 / macs0, "seconds": seconds}


def run_one(
    tool: str, name: str, threads: int, timeout: float, mem_gb: float, zoo: str = "torchvision"
) -> dict:
    cmd = [sys.executable, __file__, "--worker", tool, name, "--threads", str(threads)]
    cmd += ["--zoo", zoo]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    start, peak = time.time(), 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
            peak = max(peak, rss)
        except (OSError, StopIteration):
            pass
        if peak > mem_gb * 2**20 or time.time() - start > timeout:
            proc.kill()
            proc.wait()
            why = "timeout" if time.time() - start > timeout else f"memory > {mem_gb} GB"
            return {"tool": tool, "model": name, "ok": False, "error": why}
        time.sleep(0.05)
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return {"tool": tool, "model": name, "ok": True, **json.loads(lines[-1])}
    last = (err.strip().splitlines() or ["?"])[-1]
    return {"tool": tool, "model": name, "ok": False, "error": last[:200]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("TOOL", "MODEL"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--mem-gb", type=float, default=16)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--zoo", choices=("torchvision", "timm"), default="torchvision")
    parser.add_argument("--out", default=None, help="append JSON lines here")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.threads, args.zoo)))
        return
    if args.zoo == "timm":
        names = args.models or TIMM
    else:
        import torchvision

        names = args.models or torchvision.models.list_models(module=torchvision.models)
    rows = []
    for name in names:
        for tool in ("torchslim", "torch-pruning"):
            row = run_one(tool, name, args.threads, args.timeout, args.mem_gb, args.zoo)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    summarise(rows, len(names), args.threads, args.zoo)


def summarise(rows: list[dict], n: int, threads: int, zoo: str) -> None:
    print(f"\n{n} {zoo} models, ratio 0.5, threads={threads}")
    by = {
        t: {r["model"]: r for r in rows if r["tool"] == t} for t in ("torchslim", "torch-pruning")
    }
    for tool, got in by.items():
        ok = [r for r in got.values() if r["ok"]]
        print(
            f"{tool:14s} success {len(ok)}/{n}; median params ratio "
            f"{statistics.median(r['params_ratio'] for r in ok):.3f}, MACs ratio "
            f"{statistics.median(r['macs_ratio'] for r in ok):.3f}; total time "
            f"{sum(r['seconds'] for r in ok):.1f} s"
        )
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
    print(
        f"on the {len(both)} models both prune: total time torchslim {ts_total:.1f} s, "
        f"Torch-Pruning {tp_total:.1f} s, ratio torchslim/Torch-Pruning {ts_total / tp_total:.2f}"
    )


if __name__ == "__main__":
    main()
