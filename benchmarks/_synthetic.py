"""Shared by the writer benchmarks: a synthetic 512x512xN CT series on disk and a label map of ellipsoids.

Nothing here comes from patient data. The series is HFS, 0.9766 mm pixels, 1.5 mm slices, written
uncompressed to a temporary folder so every tool reads the same files. Structures are ellipsoids
of very different sizes laid out on a grid (one is a thick shell with a hollow inside, for holes),
written into one uint8 label map (label k = structure k), saved beside the series as labels.npy.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROWS = COLS = 512
PIXEL = 0.9765625
STEP = 1.5


def make_series(folder: Path, slices: int) -> None:
    from tests.ct_files import SeriesUids, write_ct_slice

    folder.mkdir(parents=True, exist_ok=True)
    uids = SeriesUids.new()
    yy, xx = np.mgrid[:ROWS, :COLS]
    body = (((yy - 256) / 200.0) ** 2 + ((xx - 256) / 240.0) ** 2 <= 1)
    pixels = np.where(body, 1064, 24).astype(np.int16)  # stored values; rescale -1024 -> 40 HU / -1000 HU
    for k in range(slices):
        write_ct_slice(folder / f"ct_{k:04d}.dcm", uids, k, (-250.0, -250.0, -200.0 + STEP * k), PIXEL, STEP,
                       pixels, ("Bench^Phantom", "BENCH-1"))


def make_labels(slices: int, count: int, seed: int = 7) -> np.ndarray:
    """(slices, 512, 512) uint8: ``count`` ellipsoids on a grid, radii 4-60 mm, structure 2 hollow."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((slices, ROWS, COLS), dtype=np.uint8)
    side = int(np.ceil(np.sqrt(count)))
    cell = 380 / side
    zz = np.arange(slices)[:, None, None]
    for n in range(count):
        cy, cx = 66 + cell * (n // side + 0.5), 66 + cell * (n % side + 0.5)
        cz = rng.uniform(0.3, 0.7) * slices
        r_in = rng.uniform(0.25, 0.5) * cell
        rz = rng.uniform(0.1, 0.35) * slices
        y0, y1 = int(max(cy - r_in - 1, 0)), int(min(cy + r_in + 2, ROWS))
        x0, x1 = int(max(cx - r_in - 1, 0)), int(min(cx + r_in + 2, COLS))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d = ((yy - cy) / r_in) ** 2 + ((xx - cx) / (0.8 * r_in)) ** 2 + ((zz - cz) / rz) ** 2
        inside = d <= 1
        if n == 1:
            inside &= d >= 0.4  # a hollow shell: holes on every slice it crosses
        region = labels[:, y0:y1, x0:x1]
        region[inside & (region == 0)] = n + 1
    return labels


def prepare(folder: Path, slices: int, count: int) -> None:
    make_series(folder / "ct", slices)
    np.save(folder / "labels.npy", make_labels(slices, count))


def run_children(script: str, tools: list[str], data: Path, *extra: str) -> list[dict[str, object]] | None:
    """Run ``script --run TOOL --data DATA *extra`` for each tool in its own process (so each peak
    RSS is its own) and collect the JSON line each prints (``report``); None if one failed."""
    rows = []
    for tool in tools:
        proc = subprocess.run([sys.executable, script, "--run", tool, "--data", str(data), *extra],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return None
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def print_rows(title: str, rows: list[dict[str, object]], anchor: str) -> None:
    """The table of the children's rows; the speed-up of the first row over the second (the anchor)."""
    print(title)
    for row in rows:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    if len(rows) == 2:
        print(f"  speed-up ours vs {anchor}: {float(rows[1]['seconds']) / float(rows[0]['seconds']):.2f}x")  # type: ignore[arg-type]


def report(**values: object) -> None:
    """One JSON line on stdout with the child's peak RSS (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({**values, "peak_rss_mib": round(peak, 1)}), flush=True)


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
