"""Channel widths and ONNX Runtime CPU latency: MobileNetV2 pruned to half its MACs with free
widths, widths multiples of 8, and multiples of 16, against the unpruned model.

ONNX Runtime's x86 convolutions work on blocks of channels (16 with AVX-512, 8 with AVX2); a
convolution whose output channels are not a multiple of the block stays in the plain layout, with
reorders around it. All four models (random weights, 10 classes, 32x32, batch 1) are measured in
one alternating measurement (``LatencyTable.measure_many``: ``--rounds`` rounds of 10 runs, each
block after ONNX Runtime's settle time), so they share the machine's state.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/widths.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torchvision

    import torchslim as ts
    from torchslim.search import LatencyTable

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = torchvision.models.mobilenet_v2(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    models = {"unpruned": base}
    for round_to in (1, 8, 16):
        model = copy.deepcopy(base)
        ts.prune_(model, x, target_macs=0.5, importance="l1", round_to=round_to)
        models[f"MACs x0.5, widths multiple of {round_to}"] = model
    table = LatencyTable("onnxruntime", threads=args.threads, cache=False, rounds=args.rounds)
    lats = table.measure_many(list(models.values()), x)
    print(f"| model | MACs | ORT latency (ms, median of {lats[0].runs}) | ratio |")
    print("|---|---|---|---|")
    for (name, model), lat in zip(models.items(), lats, strict=True):
        macs = ts.profile(model, x, latency=False).macs
        ratio = lat.median_ms / lats[0].median_ms
        print(f"| {name} | {macs / 1e6:.2f} M | {lat.median_ms:.3f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
