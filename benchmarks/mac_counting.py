"""MAC counting: torchslim vs Torch-Pruning against torchvision's published figures.

For every torchvision classification weight entry that publishes its operation count (``_ops``,
in GMACs), count the MACs of the model at the reference input size with

- torchslim: ``count_macs`` (PyTorch's FlopCounterMode), on the meta device and on CPU tensors;
- Torch-Pruning 1.6.1: ``tp.utils.count_ops_and_params(model, example_inputs)``, its documented
  counter, on CPU tensors (it runs the real forward pass).

and report the error against the published figure and the time each took. Both tools count the same
randomly initialised model on the same input, one after the other, in one process, with the thread
count pinned. Models above ``--max-gmacs`` are counted on meta only (the CPU forward takes minutes).

    python benchmarks/mac_counting.py --threads 2 --max-gmacs 20 --out docs/benchmarks-mac.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
import torchvision

from torchslim._inputs import as_inputs
from torchslim.models import build_on_meta
from torchslim.profiling import count_macs
from torchslim.testing import torchvision_mac_references


def reference_cases() -> list[tuple[str, int, dict, float]]:
    return [case[:4] for case in torchvision_mac_references()]


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-gmacs", type=float, default=20.0)
    parser.add_argument("--out", default=None, help="write the per-model rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import torch_pruning as tp

    rows = []
    for name, size, kwargs, ref in reference_cases():
        row = {"model": name, "size": size, "ref_gmacs": ref}
        meta_model = build_on_meta(lambda n=name, k=kwargs: torchvision.models.get_model(n, **k))
        meta_x = torch.empty(1, 3, size, size, device="meta")
        with torch.no_grad():
            (macs, _), row["ts_meta_s"] = timed(count_macs, meta_model.eval(), as_inputs(meta_x))
        row["ts_gmacs"] = macs / 1e9
        if ref <= args.max_gmacs:
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, **kwargs).eval()
            x = torch.randn(1, 3, size, size)
            with torch.no_grad():
                (cpu_macs, _), row["ts_cpu_s"] = timed(count_macs, model, as_inputs(x))
            assert cpu_macs == macs
            try:
                (tp_macs, _), row["tp_cpu_s"] = timed(tp.utils.count_ops_and_params, model, x)
                row["tp_gmacs"] = tp_macs / 1e9
            except Exception as exc:  # report, don't hide, the peer's failures
                row["tp_error"] = f"{type(exc).__name__}: {str(exc)[:80]}"
        rows.append(row)
        print(json.dumps(row), flush=True)

    def err(row, key):
        return abs(row[key] / row["ref_gmacs"] - 1) * 100

    both = [r for r in rows if "tp_gmacs" in r]
    print(
        f"\nthreads={args.threads} torch={torch.__version__} torchvision={torchvision.__version__} "
        f"torch_pruning={tp.__version__}"
    )
    print(
        f"weight entries: {len(rows)}; counted by both on CPU: {len(both)}; "
        f"Torch-Pruning failures: {sum('tp_error' in r for r in rows)}"
    )
    for label, key, subset in (
        ("torchslim", "ts_gmacs", rows),
        ("torchslim", "ts_gmacs", both),
        ("Torch-Pruning", "tp_gmacs", both),
    ):
        errors = [err(r, key) for r in subset]
        within = sum(e <= 2 for e in errors)
        print(
            f"{label:14s} on {len(subset):3d} entries: within 2%: {within}/{len(subset)}, "
            f"median |err| {statistics.median(errors):.2f}%, max |err| {max(errors):.1f}%"
        )
    ratios = [r["tp_cpu_s"] / r["ts_cpu_s"] for r in both]
    print(
        f"time on CPU tensors, Torch-Pruning / torchslim: median {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)"
    )
    print(f"torchslim on meta, whole list: {sum(r['ts_meta_s'] for r in rows):.1f} s")
    worst = sorted(both, key=lambda r: -err(r, "tp_gmacs"))[:8]
    print(
        "largest Torch-Pruning errors: "
        + ", ".join(f"{r['model']} {r['tp_gmacs']:.3f} vs {r['ref_gmacs']:.3f}" for r in worst)
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
