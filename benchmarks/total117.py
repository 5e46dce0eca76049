"""117 classes through the node on a CPU: storescu -> node -> Orthanc, beside nnU-Net + highdicom + rt-utils.

The model is ``tests.totalseg_model``'s: TotalSegmentator's five ``total`` parts (Dataset291..295,
1.5 mm plans, 128^3 patches, six-stage PlainConvUNet, NoMirroring checkpoints, 117 classes),
random weights; ``--fast`` / ``--fastest`` take the single 3 mm / 6 mm model instead, and
``--plans 3mm|6mm`` gives the five parts those plans. The CT is a synthetic 512x512x``--slices``
series at 0.8x0.8x1.5 mm.

Ours: ``segmenter models import`` (its own process), a real Orthanc, ``dicom-node serve`` (whose
worker process runs the model) and dcmtk's storescu. Printed per stage: completion (last slice
acknowledged -> job created, with ``quiet_seconds`` 2), load, each part, merge, write (SEG +
RTSTRUCT), delivery (job done -> both in Orthanc), the turnaround, the worker's peak RSS (VmHWM of
its process, default memory budget 8 GB) and the output sizes.

Anchor, the way TotalSegmentator makes its outputs: nnUNetPredictor per part
(``benchmarks/_total117_nnunet.py`` in ``--nnunet-python``), merged with TotalSegmentator's lookup
table, then highdicom (SEG) and rt-utils (RTSTRUCT) (``benchmarks/_total117_writers.py``; rt-utils
is benchmark-only: ``pip install rt-utils``, or ``--anchor-path`` a folder holding it). Both sides
get TotalSegmentator's settings: tile step 0.8 and no mirroring (``--step``, ``--mirror``: the
checkpoints then allow mirroring over 3 axes). TotalSegmentator itself also resamples the CT to
1.5 mm before nnU-Net and the labels back with nearest neighbours; neither side does that here:
both export nnU-Net's way (logits resampled to the CT's grid, then argmax).

    .venv/bin/python benchmarks/total117.py [--slices 300] [--fast | --fastest | --plans 3mm]
        [--step 0.8] [--mirror] [--nnunet-python .venv-reference/bin/python] [--anchor-path DIR]
        [--skip-anchor] [--skip-node] [--threads 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_model(args: argparse.Namespace, work: Path) -> list[Path]:
    from tests.totalseg_model import make_total_fast, make_total_parts
    axes = (0, 1, 2) if args.mirror else None
    if args.fast or args.fastest:
        return [make_total_fast(work / "model", "3mm" if args.fast else "6mm", mirror_axes=axes)]
    return make_total_parts(work / "model", args.plans, mirror_axes=axes)


def _worker_pid(serve_pid: int) -> int | None:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == serve_pid and b"worker" in cmdline:
            return int(stat.parent.name)
    return None


def _vmhwm_gb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) / 2**20 if match else None


def _log_stamp(log: str, pattern: str) -> float:
    """Epoch seconds of the last log line matching ``pattern`` (the node logs local time)."""
    from datetime import datetime
    lines = [ln for ln in log.splitlines() if re.search(pattern, ln)]
    if not lines:
        raise SystemExit(f"no log line matches {pattern!r}")
    return datetime.strptime(lines[-1][:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _log_time(log: str, start: str, end: str) -> float:
    return _log_stamp(log, end) - _log_stamp(log, start)


def run_node(args: argparse.Namespace, work: Path, files: list[Path]) -> dict[str, object]:
    from sqlalchemy import select

    from dicom_node.db.tables import Job
    from tests.e2e import node_process as npx
    from tests.peers import start_orthanc

    out: dict[str, object] = {}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "segmenter.cli", "models", "import", str(work / "model"), "--id", "total",
           "--models-dir", str(work / "models"), "--tile-step", str(args.step)]
    proc = subprocess.run(cmd + ([] if args.mirror else ["--no-mirroring"]), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"import failed:\n{proc.stderr[-3000:]}")
    out["import"] = time.perf_counter() - t0
    orthanc = start_orthanc(work / "orthanc")
    node = None
    try:
        config = npx.write_config(work, orthanc, model="total", models_dir=work / "models", quiet_seconds=2)
        if args.threads:
            text = config.read_text().replace('device = "cpu"', f'device = "cpu"\nthreads = {args.threads}')
            config.write_text(text)
        node = npx.start(config, "serve")
        npx.wait_listening(node, timeout=120)
        import pydicom
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        t_send = time.time()
        npx.storescu(node.port, files)
        t_sent = time.time()
        worker = None
        while worker is None and time.time() - t_sent < 60:
            worker = _worker_pid(node.process.pid)
            time.sleep(0.2)
        npx.wait_for_outputs(orthanc, study_uid, node, timeout=6 * 3600)
        t_done = time.time()
        out["peak_rss_gb"] = _vmhwm_gb(worker)
        log = node.log()
        with npx.index_of(config)() as s:
            job = s.scalars(select(Job)).one()
            created, started = job.created_at, job.started_at  # finished_at: once the deliveries settle
            timings = json.loads(job.timings or "{}")
        assert started is not None
        out["send"] = t_sent - t_send
        out["completion"] = created.timestamp() - t_sent
        out["queue"] = started.timestamp() - created.timestamp()
        out.update({k: v for k, v in timings.items()})
        for name, seconds in re.findall(r"model total: part (\S+) \(\d+/\d+\) took ([\d.]+) s", log):
            out[f"part {name}"] = float(seconds)
        merge = re.findall(r"merge of \d+ part\(s\) took ([\d.]+) s", log)
        if merge:
            out["merge"] = float(merge[-1])
        out["model load"] = _log_time(log, r"job \d+: \d+ instances, rule", r"job \d+: load took") - float(
            timings.get("load", 0))
        out["delivery"] = t_done - _log_stamp(log, r"job \d+: write took")
        out["turnaround"] = t_done - t_sent
        [job_dir] = npx.job_dir(config)
        for path in sorted(job_dir.glob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            kind = "seg" if ds.SOPClassUID == npx.SEG_SOP_CLASS else "rtstruct" if (
                ds.SOPClassUID == npx.RTSTRUCT_SOP_CLASS) else None
            if kind:
                out[f"{kind}_mb"] = path.stat().st_size / 1e6
                if kind == "seg":
                    out["seg_frames"] = int(ds.NumberOfFrames)
                    out["segments"] = len(ds.SegmentSequence)
        shutil.copy(job_dir / "labels.nii.gz", work / "ours.nii.gz")
        out["names"] = npx.read_structures(job_dir)["labels"]
    finally:
        if node is not None:
            node.stop()
        orthanc.stop()
    return out


def run_anchor(args: argparse.Namespace, work: Path, parts: list[Path]) -> dict[str, object]:
    t0 = time.perf_counter()
    proc = subprocess.run([args.nnunet_python, str(ROOT / "benchmarks" / "_total117_nnunet.py"), str(work / "ct"),
                           str(work / "theirs.npy"), str(args.step), "1" if args.mirror else "0", "cpu",
                           *map(str, parts)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"nnU-Net side failed:\n{proc.stderr[-4000:]}")
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["predictor_s"] = time.perf_counter() - t0
    out["predictor_peak_rss_gb"] = out.pop("peak_rss_gb")
    env = dict(os.environ)
    if args.anchor_path:
        env["PYTHONPATH"] = os.pathsep.join([args.anchor_path, env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "_total117_writers.py"), str(work / "ct"),
                           str(work / "theirs.npy"), str(work)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"highdicom / rt-utils side failed:\n{proc.stderr[-4000:]}")
    writers = json.loads(proc.stdout.strip().splitlines()[-1])
    writers["writers_peak_rss_gb"] = writers.pop("peak_rss_gb")
    out.update(writers)
    out["write"] = float(writers["seg_s"]) + float(writers["rtstruct_s"]) + float(writers["read_s"])
    out["turnaround"] = time.perf_counter() - t0 + float(out["predictor_s"])  # type: ignore[arg-type]
    out["peak_rss_gb"] = max(float(out["predictor_peak_rss_gb"]), float(writers["writers_peak_rss_gb"]))  # type: ignore[arg-type]
    return out


def agreement(work: Path, names: dict[str, str]) -> str:
    """Share of voxels with the same structure in both label maps (ours by catalogue name, the
    anchor by TotalSegmentator's, related through the built-in mapping)."""
    import SimpleITK as sitk

    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "ours.nii.gz")))
    theirs = np.load(work / "theirs.npy")
    their_names = json.loads((work / "theirs.json").read_text())
    source = json.loads((ROOT / "segmenter" / "data" / "totalsegmentator_total.json").read_text())["labels"]
    to_catalogue = {v["source"]: v["structure"] for v in source.values()}
    ids = {name: int(k) for k, name in names.items()}
    lut = np.zeros(max(int(k) for k in their_names) + 1, dtype=np.int32)
    for k, name in their_names.items():
        lut[int(k)] = ids.get(to_catalogue.get(name, ""), -1)
    mapped = lut[theirs]
    same = float((mapped == ours).mean()) * 100
    return (f"identical voxels ours vs nnU-Net: {same:.4f} % (labels present: {len(np.unique(ours))} / "
            f"{len(np.unique(theirs))})")


ROWS = ("import", "send", "completion", "queue", "model load", "load", "part 0", "part 1", "part 2", "part 3",
        "part 4", "merge", "segment", "write", "delivery", "turnaround", "peak_rss_gb", "seg_mb", "seg_frames",
        "segments", "rtstruct_mb")


def report(args: argparse.Namespace, ours: dict[str, object], theirs: dict[str, object]) -> None:
    model = "fast 3 mm (Dataset297)" if args.fast else "fastest 6 mm (Dataset298)" if args.fastest else (
        f"five parts, {args.plans} plans")
    print(f"\n117 classes, {model}, {args.slices}x512x512 CT at 0.8x0.8x1.5 mm, step {args.step}, "
          f"mirroring {'on' if args.mirror else 'off'}, CPU, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'stage':<14}{'ours':>10}{'nnU-Net+hd+rt':>15}{'ratio':>9}")
    if theirs:  # the anchor's stages under our names
        theirs = {**theirs, "load": theirs.get("read"), "segment": sum(
            float(v) for k, v in theirs.items() if re.fullmatch(r"part \d+", k)) + float(theirs.get("merge", 0))}  # type: ignore[arg-type]
    for key in ROWS:
        a, b = ours.get(key), theirs.get(key)
        if a is None and b is None:
            continue
        cells = [f"{float(v):.2f}" if v is not None else "-" for v in (a, b)]  # type: ignore[arg-type]
        ratio = f"{float(b) / float(a):.2f}x" if a and b and key not in ("seg_frames", "segments") else ""  # type: ignore[arg-type]
        print(f"{key:<14}{cells[0]:>10}{cells[1]:>15}{ratio:>9}")
    if theirs:
        print(f"anchor detail: SEG (highdicom) {float(theirs['seg_s']):.1f} s, RTSTRUCT (rt-utils) "  # type: ignore[arg-type]
              f"{float(theirs['rtstruct_s']):.1f} s, series read {float(theirs['read_s']):.1f} s; "  # type: ignore[arg-type]
              f"peak RSS predictor {float(theirs['predictor_peak_rss_gb']):.2f} GB, writers "  # type: ignore[arg-type]
              f"{float(theirs['writers_peak_rss_gb']):.2f} GB; torch {theirs.get('torch')}")  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--fast", action="store_true", help="TotalSegmentator's 3 mm model (one part)")
    group.add_argument("--fastest", action="store_true", help="TotalSegmentator's 6 mm model (one part)")
    group.add_argument("--plans", choices=["1.5mm", "3mm", "6mm"], default="1.5mm", help="the five parts' plans")
    ap.add_argument("--step", type=float, default=0.8)
    ap.add_argument("--mirror", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="the node's [models] threads (0: torch's default)")
    ap.add_argument("--nnunet-python", default=os.environ.get("NNUNET_REFERENCE_PYTHON",
                                                              str(ROOT / ".venv-reference" / "bin" / "python")))
    ap.add_argument("--anchor-path", help="extra folder on the anchor writers' PYTHONPATH (rt-utils)")
    ap.add_argument("--skip-anchor", action="store_true")
    ap.add_argument("--skip-node", action="store_true")
    ap.add_argument("--keep", help="work in this folder and keep it")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="total117-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        from tests.totalseg_model import Series, write_ct_series
        t0 = time.perf_counter()
        parts = make_model(args, work)
        files = write_ct_series(work / "ct", Series(slices=args.slices))
        print(f"model and CT generated in {time.perf_counter() - t0:.0f} s ({work})", flush=True)
        ours = {} if args.skip_node else run_node(args, work, files)
        print(f"ours: {json.dumps({k: v for k, v in ours.items() if k != 'names'})}", flush=True)
        theirs = {} if args.skip_anchor else run_anchor(args, work, parts)
        print(f"anchor: {json.dumps(theirs)}", flush=True)
        report(args, ours, theirs)
        if ours and theirs:
            print(agreement(work, ours["names"]))  # type: ignore[arg-type]
        print(f"this process's peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
