"""RTSTRUCT writing: ours vs rt-utils, same synthetic 512x512xN CT and label map, each in its own process.

    .venv/bin/python benchmarks/rtstruct_write.py [--slices 300] [--structures 20] [--skip-rtutils]

Both sides start from the CT folder on disk and a label map in memory and end with a saved file:
rt-utils reads the series (``RTStructBuilder.create_new``), gets one boolean mask per structure
(``add_roi``, its input format) and saves; ours reads and checks the series headers
(``load_series(..., pixels=False)``: the label map is given, the pixels are not needed, as in
``dicom-node write``), builds the RTSTRUCT from the label map in one process and saves it
atomically (fsync). Peak RSS is the child's ru_maxrss.
rt-utils is a benchmark-only dependency (``pip install rt-utils`` into .venv), not the project's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._synthetic import Timer, prepare, print_rows, report, run_children

NAMES = ["Liver", "Spleen", "Kidney_L", "Kidney_R", "Stomach", "Pancreas", "Heart", "A_Aorta", "Esophagus",
         "Trachea", "Lung_L", "Lung_R", "SpinalCord", "Gallbladder", "Bladder", "Colon", "Duodenum", "Brain",
         "Sternum", "Bowel_Small"]


def run_ours(data: Path, count: int) -> None:
    import numpy as np

    from dicom_node.outputs.common import write_dataset
    from dicom_node.outputs.rtstruct.builder import build_rtstruct
    from dicom_node.series_io import load_series
    from segmenter.core.result import LabelledStructure, SegmentationResult
    from tests.outputs_helpers import identity

    labels = np.load(data / "labels.npy")
    with Timer() as total:
        with Timer() as read:
            # the label map is given, so only the headers are read (as `dicom-node write` does)
            series = load_series(sorted((data / "ct").iterdir()), pixels=False)
        result = SegmentationResult(series.volume.with_array(labels),
                                    tuple(LabelledStructure(n + 1, NAMES[n]) for n in range(count)), "bench", "1")
        with Timer() as build:
            ds = build_rtstruct(series, result, identity())
        with Timer() as save:
            write_dataset(ds, data / "ours.dcm")
    report(tool="ours", seconds=round(total.seconds, 2), read_s=round(read.seconds, 2),
           build_s=round(build.seconds, 2), save_s=round(save.seconds, 2),
           size_mb=round((data / "ours.dcm").stat().st_size / 1e6, 2))


def run_rtutils(data: Path, count: int) -> None:
    import numpy as np
    from rt_utils import RTStructBuilder

    labels = np.load(data / "labels.npy")
    with Timer() as total:
        rtstruct = RTStructBuilder.create_new(dicom_series_path=str(data / "ct"))
        for n in range(count):
            mask = np.ascontiguousarray((labels == n + 1).transpose(1, 2, 0))  # rt-utils: (rows, cols, slices)
            rtstruct.add_roi(mask=mask, name=NAMES[n])
            del mask
        rtstruct.save(str(data / "rtutils.dcm"))
    report(tool="rt-utils", seconds=round(total.seconds, 2),
           size_mb=round((data / "rtutils.dcm").stat().st_size / 1e6, 2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--structures", type=int, default=20, choices=range(1, len(NAMES) + 1))
    parser.add_argument("--skip-rtutils", action="store_true")
    parser.add_argument("--run", choices=["ours", "rtutils"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        (run_ours if args.run == "ours" else run_rtutils)(args.data, args.structures)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_rtstruct_") as tmp:
        data = Path(tmp)
        prepare(data, args.slices, args.structures)
        rows = run_children(__file__, ["ours"] + ([] if args.skip_rtutils else ["rtutils"]), data,
                            "--structures", str(args.structures))
    if rows is None:
        return 1
    print_rows(f"RTSTRUCT, {args.structures} structures, 512x512x{args.slices} synthetic CT", rows, "rt-utils")
    return 0


if __name__ == "__main__":
    sys.exit(main())
