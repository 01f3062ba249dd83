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


def input_size(name: str) -> int:
    if name.startswith(("vit", "swin", "maxvit")):
        return 224
    return SIZES.get(name, 64)


def build(name: str):
    import torch
    import torchvision

    kwargs = dict(KWARGS.get(name, {}))
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def worker(tool: str, name: str, threads: int) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    model = build(name)
    x = torch.randn(1, 3, input_size(name), input_size(name))
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
        num_heads = {
            m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)
        }
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


def run_one(tool: str, name: str, threads: int, timeout: float, mem_gb: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", tool, name, "--threads", str(threads)]
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
    parser.add_argument("--out", default=None, help="append JSON lines here")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.threads)))
        return
    import torchvision

    names = args.models or torchvision.models.list_models(module=torchvision.models)
    rows = []
    for name in names:
        for tool in ("torchslim", "torch-pruning"):
            row = run_one(tool, name, args.threads, args.timeout, args.mem_gb)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    summarise(rows, len(names), args.threads)


def summarise(rows: list[dict], n: int, threads: int) -> None:
    print(f"\n{n} torchvision classification models, ratio 0.5, threads={threads}")
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
