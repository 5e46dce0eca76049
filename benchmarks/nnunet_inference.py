"""Ours vs nnU-Net v2's predictor on the same TotalSegmentator-shaped model and the same CT.

The model: TotalSegmentator's 3d_fullres plans (1.5 mm isotropic, patch 128^3, 6-stage
PlainConvUNet 32-64-128-256-320-320, 2 convs per stage and per decoder stage), random weights,
``--classes`` outputs (25 = one of the five parts of ``total``). The CT: a synthetic
512x512x``--slices`` volume at 0.8x0.8x1.5 mm. Tile step 0.8 and no mirroring (TotalSegmentator's
settings) unless told otherwise. Each side runs in its own process (peak RSS is that process's
``ru_maxrss``); nnU-Net runs in the interpreter given by ``--nnunet-python`` (a venv with nnunetv2,
which pins its own torch build), FastSegmentator (nnU-Net/TotalSegmentator with every stage on the
GPU) in the one given by ``--fastseg-python`` (``scripts/reference_env.sh`` builds one venv for
both). Prints per-stage seconds, peak RSS (and GPU memory on CUDA), our speed-up against each
anchor and the share of voxels on which each pair of label maps agrees.

    .venv/bin/python benchmarks/nnunet_inference.py [--slices 300] [--classes 25] [--step 0.8]
        [--mirror] [--device cpu|cuda] [--batch 1] [--nnunet-python /tmp/nnunet-venv/bin/python]
        [--skip-nnunet] [--fastseg-python PY] [--skip-fastseg] [--fastseg-cpu-fix]
        [--preprocess-device auto|on|off]
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
AUTO_ON_OFF = {"auto": None, "on": True, "off": False}  # the engine's tri-state switches


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

    from segmenter.nnunet.plans import (
        network_for,
        parse_dataset,
        parse_plans,
        read_json,
    )
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
    # the checkpoint make_model_folder wrote a moment ago, in nnU-Net's format (numpy scalars, a torch.device)
    ck = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    ck["network_weights"] = net.state_dict()
    ck["init_args"]["plans"] = plans
    torch.save(ck, folder / "fold_0" / "checkpoint_final.pth")
    image = synthetic_ct((slices, 512, 512), seed=3)
    np.save(work / "ct.npy", image)
    return folder, work / "ct.npy"


def run_ours(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from segmenter.nnunet.engine import NnUNetPartModel, resolve_device
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    model = NnUNetPartModel.load(Path(args.folder), None, ["0"], tile_step=args.step, mirroring=args.mirror,
                                 batch_size=args.batch)
    model.channels_last = AUTO_ON_OFF[args.channels_last]
    model.stream = AUTO_ON_OFF[args.stream]
    model.preprocess_on_device = AUTO_ON_OFF[args.preprocess_device]
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


def fastseg_child(args: argparse.Namespace, folder: Path, image: Path, out: Path) -> dict[str, object]:
    """FastSegmentator's side, or {} with one line on stdout saying why it was not run or failed: a
    third anchor that cannot run must not cost the other two columns, nor go unnoticed."""
    py = args.fastseg_python
    try:
        probe = subprocess.run([py, "-c", "import fastsegmentator"], capture_output=True, text=True)
    except OSError as e:  # no such interpreter, or not executable
        probe = None
        why = f"{type(e).__name__}: {e.strerror}"
    if probe is None or probe.returncode != 0:
        if probe is not None:
            why = (probe.stderr.strip().splitlines() or ["?"])[-1]
        print(f"FastSegmentator not run: {py} cannot import fastsegmentator ({why}); build it with "
              f"`bash scripts/reference_env.sh` or pass --fastseg-python / FASTSEG_PYTHON, or --skip-fastseg")
        return {}
    opts = [f"predictor={args.fastseg_predictor}", f"seg={args.fastseg_seg}"]
    opts += ["cpu_bbox_fix=1"] if args.fastseg_cpu_fix else []
    proc = subprocess.run([py, str(ROOT / "benchmarks" / "_fastseg_worker.py"), str(folder), str(image),
                           ",".join(map(str, SPACING_ZYX)), str(out), str(args.step), "1" if args.mirror else "0",
                           args.device, *opts], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("INFO - ")]
        # the innermost frames and the exception line say where and why; the rest is noise
        frames = [i for i, ln in enumerate(lines) if ln.lstrip().startswith('File "')]
        tail = lines[frames[-3]:] if len(frames) >= 3 else lines[-8:]
        hint = ("; on the CPU FastSegmentator 0.1.1 needs --fastseg-cpu-fix (see benchmarks/_fastseg_worker.py)"
                if args.device == "cpu" and not args.fastseg_cpu_fix else "")
        print(f"FastSegmentator failed (exit {proc.returncode}, {' '.join(opts)}), not in the table{hint}; "
              f"its stderr ends:\n  " + "\n  ".join(tail[:12]))
        return {}
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def report(args: argparse.Namespace, work: Path, ours: dict[str, object], theirs: dict[str, object],
           fast: dict[str, object]) -> None:
    print(f"\nnnU-Net inference, {args.slices}x512x512 CT at 0.8x0.8x1.5 mm, {args.classes} classes, "
          f"step {args.step}, mirroring {'on' if args.mirror else 'off'}, device {args.device}, "
          f"{os.cpu_count()} CPUs")
    if fast:
        print(f"FastSeg: fastsegmentator {fast.get('fastsegmentator')}, predictor {fast.get('predictor')}, "
              f"labels by {fast.get('seg')}" + (", CPU bounding-box fix (see _fastseg_worker.py)"
                                                if fast.get("cpu_bbox_fix") else ""))
    print(f"{'stage':<12}{'ours':>10}{'nnU-Net':>10}{'FastSeg':>10}{'vs nnU-Net':>12}{'vs FastSeg':>12}")
    for key in ("preprocess", "predict", "export", "total", "cpu_s", "peak_rss_gb", "gpu_peak_gb"):
        a, b, c = ours.get(key), theirs.get(key), fast.get(key)
        if a is None and b is None and c is None:
            continue
        cells = [f"{float(v):.2f}" if v is not None else "-" for v in (a, b, c)]
        ratios = [f"{float(v) / float(a):.2f}x" if a and v and key not in ("peak_rss_gb", "gpu_peak_gb") else ""
                  for v in (b, c)]
        print(f"{key:<12}{cells[0]:>10}{cells[1]:>10}{cells[2]:>10}{ratios[0]:>12}{ratios[1]:>12}")
    print(f"torch threads: ours {ours.get('threads')} (torch {ours.get('torch')}), "
          f"nnU-Net {theirs.get('threads', '-')} (torch {theirs.get('torch', '-')}), "
          f"FastSeg {fast.get('threads', '-')} (torch {fast.get('torch', '-')})")
    maps = {"ours": work / "ours.npy"}
    if theirs:
        maps["nnU-Net"] = work / "theirs.npy"
    if fast:
        maps["FastSeg"] = work / "fastseg.npy"
    labels = {k: np.load(v) for k, v in maps.items()}
    for x, y in (("ours", "nnU-Net"), ("ours", "FastSeg"), ("FastSeg", "nnU-Net")):
        if x in labels and y in labels:
            a, b = labels[x], labels[y]
            print(f"identical voxels {x} vs {y}: {(a == b).mean() * 100:.4f} %  "
                  f"(labels present: {len(np.unique(a))} / {len(np.unique(b))})")


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
    ap.add_argument("--fastseg-python", default=os.environ.get("FASTSEG_PYTHON"),
                    help="interpreter with fastsegmentator (default $FASTSEG_PYTHON, else the nnU-Net one)")
    ap.add_argument("--skip-fastseg", action="store_true")
    ap.add_argument("--fastseg-predictor", choices=["fast", "simple"], default="fast",
                    help="FastPredictor (its TotalSegmentator path) or SimplePredictor (CUDA only)")
    ap.add_argument("--fastseg-seg", choices=["argmax", "threshold"], default="argmax",
                    help="softmax argmax as nnU-Net, or FastSegmentator's max-logit >= 0.5 rule")
    ap.add_argument("--fastseg-cpu-fix", action="store_true",
                    help="hand FastSegmentator's CPU bounding box a numpy mask (its CPU path fails without)")
    ap.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                    help="our network's memory layout (auto: channels-last on the CPU)")
    ap.add_argument("--preprocess-device", choices=["auto", "on", "off"], default="auto",
                    help="our crop, normalisation and resampling in torch on the prediction device (auto: on "
                         "CUDA only; off: numpy on the host)")
    ap.add_argument("--stream", choices=["auto", "on", "off"], default="auto",
                    help="export slab by slab as the sliding window finishes them (auto: above 2 GiB of "
                         "whole-image accumulator)")
    ap.add_argument("--keep", help="keep the model, CT and the label maps in this folder")
    ap.add_argument("--worker", choices=["ours"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.fastseg_python = args.fastseg_python or args.nnunet_python
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
                  ] + (["--mirror"] if args.mirror else []) + ["--stream", args.stream, "--preprocess-device",
                                                                   args.preprocess_device]
        ours = child([sys.executable, __file__, "--worker", "ours", "--out", str(work / "ours.npy"), *common])
        theirs: dict[str, object] = {}
        if not args.skip_nnunet:
            theirs = child([args.nnunet_python, str(ROOT / "benchmarks" / "_nnunet_worker.py"), str(folder),
                            str(image), ",".join(map(str, SPACING_ZYX)), str(work / "theirs.npy"), str(args.step),
                            "1" if args.mirror else "0", args.device])
        fast: dict[str, object] = {}
        if not args.skip_fastseg:
            fast = fastseg_child(args, folder, image, work / "fastseg.npy")
        report(args, work, ours, theirs, fast)

if __name__ == "__main__":
    main()
