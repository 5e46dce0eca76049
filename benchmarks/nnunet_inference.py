"""Ours vs nnU-Net v2's predictor on the same TotalSegmentator-shaped model and the same CT.

The model: TotalSegmentator's 3d_fullres plans (1.5 mm isotropic, patch 128^3, 6-stage
PlainConvUNet 32-64-128-256-320-320, 2 convs per stage and per decoder stage), random weights,
``--classes`` outputs (25 = one of the five parts of ``total``). The CT: a synthetic
512x512x``--slices`` volume at 0.8x0.8x1.5 mm. Tile step 0.8 and no mirroring (TotalSegmentator's
settings) unless told otherwise. Each side runs in its own process (peak RSS is that process's
``ru_maxrss``); nnU-Net runs in the interpreter given by ``--nnunet-python`` (a venv with nnunetv2,
which pins its own torch build). Prints per-stage seconds, peak RSS (and GPU memory on CUDA) and the
share of voxels on which both label maps agree.

    .venv/bin/python benchmarks/nnunet_inference.py [--slices 300] [--classes 25] [--step 0.8]
        [--mirror] [--device cpu|cuda] [--batch 1] [--nnunet-python /tmp/nnunet-venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPACING_ZYX = (1.5, 0.8, 0.8)


def totalseg_spec(classes: int):  # type: ignore[no-untyped-def]
    from tests.nnunet_fixtures import ModelSpec
    return ModelSpec("TotalSegLike", spacing=(1.5, 1.5, 1.5), patch=(128, 128, 128), n_classes=classes,
                     features=(32, 64, 128, 256, 320, 320), folds=(0,), mirror_axes=(0, 1, 2), seed=7)


def make_inputs(work: Path, slices: int, classes: int) -> tuple[Path, Path]:
    from tests.nnunet_fixtures import make_model_folder, plans_for, synthetic_ct
    spec = totalseg_spec(classes)
    folder = make_model_folder(work, spec)
    plans = plans_for(spec)
    # TotalSegmentator's decoder has 2 convs per stage: rewrite plans and regenerate weights to match
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["n_conv_per_stage_decoder"] = [2] * 5  # type: ignore[index]
    (folder / "plans.json").write_text(json.dumps(plans))
    import torch
    from segmenter.nnunet_plans import network_for, parse_dataset, parse_plans, read_json
    p = parse_plans(plans)
    net = network_for(p, p.configuration("3d_fullres"), parse_dataset(read_json(folder / "dataset.json")))
    rng = np.random.default_rng(7)
    sd = {}
    for k, v in net.state_dict().items():
        shape = tuple(v.shape)
        if k.endswith("weight") and len(shape) > 1:
            arr = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        elif k.endswith("weight"):
            arr = 1 + 0.1 * rng.normal(size=shape)
        else:
            arr = 0.1 * rng.normal(size=shape)
        sd[k] = torch.from_numpy(arr.astype(np.float32))
    net.load_state_dict(sd)
    ck = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    ck["network_weights"] = net.state_dict()
    ck["init_args"]["plans"] = plans
    torch.save(ck, folder / "fold_0" / "checkpoint_final.pth")
    image = synthetic_ct((slices, 512, 512), seed=3)
    np.save(work / "ct.npy", image)
    return folder, work / "ct.npy"


def run_ours(args: argparse.Namespace) -> dict[str, object]:
    import torch
    from segmenter.nnunet_engine import NnUNetPartModel, resolve_device
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    model = NnUNetPartModel.load(Path(args.folder), None, ["0"], tile_step=args.step, mirroring=args.mirror,
                                 batch_size=args.batch)
    model.channels_last = {"auto": None, "on": True, "off": False}[args.channels_last]
    model.stream = {"auto": None, "on": True, "off": False}[args.stream]
    model.to(device)
    image = np.load(args.image)
    load = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    labels = model.predict(image, SPACING_ZYX, device)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.save(args.out, labels)
    out: dict[str, object] = {"load": load, **model.timings, "total": total, "cpu_s": cpu,
                              "threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.type == "cuda":
        out["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def child(cmd: list[str]) -> dict[str, object]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed:\n{proc.stderr[-4000:]}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--classes", type=int, default=25)
    ap.add_argument("--step", type=float, default=0.8)
    ap.add_argument("--mirror", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--nnunet-python", default=os.environ.get("NNUNET_REFERENCE_PYTHON", "/tmp/nnunet-venv/bin/python"))
    ap.add_argument("--skip-nnunet", action="store_true")
    ap.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                    help="our network's memory layout (auto: channels-last on the CPU)")
    ap.add_argument("--stream", choices=["auto", "on", "off"], default="auto",
                    help="export slab by slab as the sliding window finishes them (auto: above 2 GiB of "
                         "whole-image accumulator)")
    ap.add_argument("--keep", help="keep the model, CT and both label maps in this folder")
    ap.add_argument("--worker", choices=["ours"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "ours":
        res = run_ours(args)
        res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(res))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        folder, image = make_inputs(work, args.slices, args.classes)
        common = ["--folder", str(folder), "--image", str(image), "--step", str(args.step),
                  "--device", args.device, "--batch", str(args.batch), "--channels-last", args.channels_last
                  ] + (["--mirror"] if args.mirror else []) + ["--stream", args.stream]
        ours = child([sys.executable, __file__, "--worker", "ours", "--out", str(work / "ours.npy"), *common])
        theirs: dict[str, object] = {}
        if not args.skip_nnunet:
            theirs = child([args.nnunet_python, str(ROOT / "benchmarks" / "_nnunet_worker.py"), str(folder),
                            str(image), ",".join(map(str, SPACING_ZYX)), str(work / "theirs.npy"), str(args.step),
                            "1" if args.mirror else "0", args.device])
        print(f"\nnnU-Net inference, {args.slices}x512x512 CT at 0.8x0.8x1.5 mm, {args.classes} classes, "
              f"step {args.step}, mirroring {'on' if args.mirror else 'off'}, device {args.device}, "
              f"{os.cpu_count()} CPUs")
        print(f"{'stage':<12}{'ours':>10}{'nnU-Net':>10}{'speed-up':>10}")
        for key in ("preprocess", "predict", "export", "total", "cpu_s", "peak_rss_gb", "gpu_peak_gb"):
            a, b = ours.get(key), theirs.get(key)
            if a is None and b is None:
                continue
            ratio = f"{float(b) / float(a):.2f}x" if a and b and key not in ("peak_rss_gb", "gpu_peak_gb") else ""
            fa = f"{float(a):.2f}" if a is not None else "-"
            fb = f"{float(b):.2f}" if b is not None else "-"
            print(f"{key:<12}{fa:>10}{fb:>10}{ratio:>10}")
        print(f"torch threads: ours {ours.get('threads')} (torch {ours.get('torch')}), "
              f"nnU-Net {theirs.get('threads', '-')} (torch {theirs.get('torch', '-')})")
        if theirs:
            a, b = np.load(work / "ours.npy"), np.load(work / "theirs.npy")
            print(f"identical voxels: {(a == b).mean() * 100:.4f} %  (labels present: {len(np.unique(b))})")


if __name__ == "__main__":
    main()
