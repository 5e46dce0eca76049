"""Encoder + N heads (one multi-head model) vs N separate networks (one U-Net per head).

```
.venv/bin/python benchmarks/multihead.py [--heads 4] [--classes 6] [--shape 48,96,96]
        [--features 16,32,64,128] [--patch 32,64,64] [--device cpu|cuda] [--threads 2] [--repeat 2]
        [--adapter N]
```

Both sides are the same architecture (:mod:`segmenter.multihead.net`): a "separate network" is the
general encoder + one head; the multi-head model is one encoder + N heads. Weights are random (time
and memory do not depend on their values). Inference = the sliding window of
:mod:`segmenter.nnunet.sliding_window` over a random volume of ``--shape`` (the network grid), Gaussian
weights, step 0.5, float32 accumulator: once with all heads on one encoder pass per tile, and N times
(one pass per separate network). Each side runs in its own child process so that peak memory is its
own: peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Time = best of ``--repeat`` runs
after one warm-up run, network construction excluded. ``--adapter N`` gives every head of the
multi-head model after the first its own adapter (bottleneck = channels / N per encoder stage), as
heads added by ``segmenter add-head --adapter N`` have: their cost in parameters and time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmenter.multihead.net import (
    HeadSubset,
    MultiHeadNet,
    adapter_ranks,
    count_parameters,
)
from segmenter.nnunet.sliding_window import WindowSettings, sliding_window_logits


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _child(args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    features = _ints(args.features)
    nets = []
    if args.child == "multi":
        net = MultiHeadNet(1, features)
        for i in range(args.heads):
            adapter = adapter_ranks(features, args.adapter) if args.adapter and i > 0 else None
            net.add_head(f"h{i}", args.classes, adapter=adapter)
        nets.append((net, [f"h{i}" for i in range(args.heads)]))
    else:
        for _ in range(args.heads):
            net = MultiHeadNet(1, features)
            net.add_head("h0", args.classes)
            nets.append((net, ["h0"]))
    params = sum(count_parameters(n) for n, _ in nets)
    models = [HeadSubset(n, names).to(device).eval() for n, names in nets]
    data = torch.randn((1, *_ints(args.shape)), device=device)
    settings = WindowSettings(tile_step=0.5, accumulate_dtype=torch.float32, mixed_precision=True)
    patch = _ints(args.patch)

    def run() -> None:
        for m in models:
            out = sliding_window_logits([m], data, patch, args.classes * len(m.names), settings)
            torch.argmax(out.view(len(m.names), args.classes, *out.shape[1:]), dim=1)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    memory = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"params": params, "seconds": min(times), "memory_mb": memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--classes", type=int, default=6, help="output channels per head (incl. background)")
    parser.add_argument("--shape", default="48,96,96", help="volume on the network grid (z,y,x)")
    parser.add_argument("--features", default="16,32,64,128")
    parser.add_argument("--patch", default="32,64,64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--adapter", type=int, default=0, metavar="N",
                        help="heads after the first get an adapter (bottleneck = channels / N); 0 = none")
    parser.add_argument("--child", choices=["multi", "separate"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.stdout.write(json.dumps(_child(args)) + "\n")
        return 0
    rows = {}
    for kind in ("separate", "multi"):
        cmd = [sys.executable, __file__, "--child", kind] + [a for a in sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return 1
        rows[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    mem = "peak CUDA MB" if args.device.startswith("cuda") else "peak RSS MB"
    sys.stdout.write(f"{args.heads} heads x {args.classes} classes, volume {args.shape}, patch {args.patch}, "
                     f"features {args.features}, device {args.device}, threads {args.threads}\n")
    sys.stdout.write(f"| {'':28} | {'parameters':>12} | {'inference s':>11} | {mem:>12} |\n")
    sys.stdout.write(f"|{'-' * 30}|{'-' * 14}|{'-' * 13}|{'-' * 14}|\n")
    names = {"separate": f"{args.heads} separate networks",
             "multi": f"encoder + {args.heads} heads" + (f", adapter/{args.adapter}" if args.adapter else "")}
    for kind in ("separate", "multi"):
        r = rows[kind]
        sys.stdout.write(f"| {names[kind]:28} | {r['params']:>12,} | {r['seconds']:>11.2f} "
                         f"| {r['memory_mb']:>12.0f} |\n")
    s, m = rows["separate"], rows["multi"]
    sys.stdout.write(f"| {'multi / separate':28} | {m['params'] / s['params']:>12.2f} | "
                     f"{m['seconds'] / s['seconds']:>11.2f} | {m['memory_mb'] / s['memory_mb']:>12.2f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
