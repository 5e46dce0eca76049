"""DICOM-SEG writing: ours vs highdicom given the same label map (117 segments), each in its own process.

    .venv/bin/python benchmarks/seg_write.py [--slices 300] [--segments 117]

Both read the synthetic series headers the same way (``load_series``; not timed), then build a
BINARY SEG with empty frames omitted from the uint8 label map and save it. highdicom is called as
its documentation shows (label-map ``pixel_array``, one SegmentDescription per label); ours is
``build_seg`` + ``write_dataset`` with catalogue codes (TotalSegmentator's 117 classes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._synthetic import Timer, prepare, print_rows, report, run_children


def _inputs(data: Path, count: int):  # type: ignore[no-untyped-def]
    import numpy as np

    from dicom_node.series_io import load_series

    return load_series(sorted((data / "ct").iterdir())), np.load(data / "labels.npy")


def run_ours(data: Path, count: int) -> None:
    from dicom_node.outputs.common import write_dataset
    from dicom_node.outputs.seg import build_seg
    from segmenter.core.catalogue import builtin_mapping
    from segmenter.core.result import LabelledStructure, SegmentationResult
    from tests.outputs_helpers import identity

    series, labels = _inputs(data, count)
    mapping = builtin_mapping("totalsegmentator_total")
    result = SegmentationResult(series.volume.with_array(labels),
                                tuple(LabelledStructure(n, mapping[n]) for n in range(1, count + 1)), "bench", "1")
    with Timer() as total:
        with Timer() as build:
            ds = build_seg(series, result, identity())
        write_dataset(ds, data / "ours.dcm")
    report(tool="ours", seconds=round(total.seconds, 2), build_s=round(build.seconds, 2),
           frames=int(ds.NumberOfFrames), size_mb=round((data / "ours.dcm").stat().st_size / 1e6, 2))


def run_highdicom(data: Path, count: int) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    series, labels = _inputs(data, count)
    with Timer() as total:
        descriptions = [hd.seg.SegmentDescription(
            segment_number=n, segment_label=f"S{n}", segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Liver, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="bench", family=codes.cid7162.ArtificialIntelligence, version="1"))
            for n in range(1, count + 1)]
        seg = hd.seg.Segmentation(
            source_images=list(series.datasets), pixel_array=labels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=1, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="x", manufacturer_model_name="x", software_versions="1", device_serial_number="1",
            omit_empty_frames=True)
        seg.save_as(data / "highdicom.dcm")
    report(tool="highdicom", seconds=round(total.seconds, 2), frames=int(seg.NumberOfFrames),
           size_mb=round((data / "highdicom.dcm").stat().st_size / 1e6, 2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--segments", type=int, default=117, choices=range(1, 118))
    parser.add_argument("--run", choices=["ours", "highdicom"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        (run_ours if args.run == "ours" else run_highdicom)(args.data, args.segments)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_seg_") as tmp:
        data = Path(tmp)
        prepare(data, args.slices, args.segments)
        rows = run_children(__file__, ["ours", "highdicom"], data, "--segments", str(args.segments))
    if rows is None:
        return 1
    print_rows(f"DICOM-SEG (BINARY), {args.segments} segments, 512x512x{args.slices} synthetic CT", rows,
               "highdicom")
    return 0


if __name__ == "__main__":
    sys.exit(main())
