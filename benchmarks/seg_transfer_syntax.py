"""SEG size and write time per transfer syntax (ours vs highdicom), and the RTSTRUCT of the same structures.

    .venv/bin/python benchmarks/seg_transfer_syntax.py [--case nsclc|synthetic|both] [--slices 300]
        [--skip-highdicom] [--skip-plastimatch] [--skip-seg]

Cases:
- ``nsclc``: the built-in segmenter's 6 structures (5 in the label map, External overlapping them) on
  the real NSCLC CT ``../shared/data/ct/nsclc_lung1_001/ct`` (134 slices; read, never copied).
- ``synthetic``: 117 ellipsoids (TotalSegmentator ``total``'s class count) on the synthetic
  512x512xN series of ``_synthetic.py`` (no patient data).

SEG, per type (BINARY, LABELMAP) and transfer syntax:
- ours: ``build_seg_instances`` + ``write_dataset`` (uncompressed, as the node stores it); then each
  compressed syntax as the sender makes it from the stored file (``seg_encoding.encoded``, then
  saved: the deflate happens in the save, as pynetdicom does it when sending). ``seconds`` of a
  compressed row is that encoding alone (done at send time), ``total_s`` the uncompressed write plus
  it; every encoded file is decoded again and checked equal to the uncompressed one (not timed).
- highdicom: ``hd.seg.Segmentation`` from the same masks with ``transfer_syntax_uid`` (its RLE,
  JPEG-LS and JPEG 2000 lossless; it has no deflate: pydicom deflates on save), timed build + save.
RTSTRUCT: ``build_rtstruct`` with the default options (0.5 mm, the raster kept: the contours fill back
to exactly the SEG's voxels), with ``tolerance_mm = 0`` (only collinear points dropped) and without
``preserve_raster`` at 0.5 and 1.0 mm; size, time, contours, points, the largest ROI's share of the
points; plastimatch's round trip Dice per ROI (``--xor-contours``; min and median).
Everything runs in one process, one step after the other.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._synthetic import Timer, prepare

NSCLC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct" / "nsclc_lung1_001" / "ct"
SYNTAXES = {"BINARY": ["DeflatedExplicitVRLittleEndian"],
            "LABELMAP": ["DeflatedExplicitVRLittleEndian", "RLELossless", "JPEGLSLossless", "JPEG2000Lossless"]}


def nsclc_case() -> tuple[Any, Any, Path]:
    from dicom_node.series_io import load_series
    from segmenter.classical.engine import segment

    series = load_series(sorted(p for p in NSCLC.iterdir() if p.is_file()))
    with Timer() as t:
        result = segment(series.volume)
    print(f"built-in segmenter on NSCLC {series.volume.shape}: {t.seconds:.1f} s", flush=True)
    return series, result, NSCLC


def synthetic_case(folder: Path, slices: int) -> tuple[Any, Any, Path]:
    from dicom_node.series_io import load_series
    from segmenter.core.catalogue import builtin_mapping
    from segmenter.core.result import LabelledStructure, SegmentationResult

    prepare(folder, slices, 117)
    series = load_series(sorted((folder / "ct").iterdir()))
    mapping = builtin_mapping("totalsegmentator_total")
    labels = np.load(folder / "labels.npy")
    result = SegmentationResult(series.volume.with_array(labels),
                                tuple(LabelledStructure(n, mapping[n]) for n in range(1, 118)), "bench", "1")
    return series, result, folder / "ct"


def _mb(paths: list[Path]) -> float:
    return round(sum(p.stat().st_size for p in paths) / 1e6, 3)


def ours(series: Any, result: Any, out: Path) -> list[dict[str, Any]]:
    import pydicom

    from dicom_node.outputs.common import write_dataset
    from dicom_node.outputs.seg import build_seg_instances
    from dicom_node.send.seg_encoding import encoded
    from dicom_node.settings.syntaxes import SEG_SYNTAXES
    from tests.outputs_helpers import identity

    rows = []
    for seg_type, syntaxes in SYNTAXES.items():
        with Timer() as t:
            instances = build_seg_instances(series, result, identity(), seg_type=seg_type)
            stored = []
            for n, ds in enumerate(instances):
                stored.append(out / f"ours-{seg_type}-{n}.dcm")
                write_dataset(ds, stored[-1])
        frames = sum(int(ds.NumberOfFrames) for ds in instances)
        del instances
        written_s = t.seconds
        rows.append({"tool": "ours", "type": seg_type, "syntax": "ExplicitVRLittleEndian", "instances": len(stored),
                     "frames": frames, "mb": _mb(stored), "seconds": round(t.seconds, 2),
                     "total_s": round(t.seconds, 2)})
        for keyword in syntaxes:
            uid = SEG_SYNTAXES[keyword].uid
            made = []
            with Timer() as t:
                for path in stored:
                    made.append(path.with_suffix(f".{keyword}.dcm"))
                    encoded(path, uid).save_as(made[-1], enforce_file_format=True)
            for path, back in zip(stored, made, strict=True):  # lossless: the same pixels come back
                a, b = pydicom.dcmread(path), pydicom.dcmread(back)
                same = a.PixelData == b.PixelData if seg_type == "BINARY" else np.array_equal(a.pixel_array,
                                                                                             b.pixel_array)
                assert same, f"{back.name} does not decode to the stored pixels"
            rows.append({"tool": "ours", "type": seg_type, "syntax": keyword, "instances": len(made),
                         "frames": frames, "mb": _mb(made), "seconds": round(t.seconds, 2),
                         "total_s": round(written_s + t.seconds, 2)})
            for path in made:
                path.unlink()
        for path in stored:
            path.unlink()
    return rows


def _highdicom_inputs(series: Any, result: Any, seg_type: str) -> list[tuple[np.ndarray, list[str]]]:
    """(pixel array, segment names) per instance, the same grouping as ours: BINARY one instance (label-map
    style, or stacked masks when extra masks overlap); LABELMAP the label map, then each extra mask alone."""
    labels = result.labels.array
    present = [s for s in result.structures if np.any(labels == s.label)]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint8 if len(present) < 256 else np.uint16)
    for number, s in enumerate(present, start=1):
        lut[s.label] = number
    label_map = lut[labels]
    extras = list(result.extra_masks.items())
    if seg_type == "BINARY" and extras:
        stacked = np.stack([labels == s.label for s in present] + [m for _, m in extras], axis=-1)
        return [(stacked, [s.name for s in present] + [n for n, _ in extras])]
    groups = [(label_map, [s.name for s in present])]
    if seg_type == "LABELMAP":
        groups += [(m.astype(np.uint8), [n]) for n, m in extras]
    return groups


def highdicom(series: Any, result: Any, out: Path) -> list[dict[str, Any]]:
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    from dicom_node.settings.syntaxes import SEG_SYNTAXES

    rows = []
    for seg_type, syntaxes in SYNTAXES.items():
        inputs = _highdicom_inputs(series, result, seg_type)
        for keyword in ["ExplicitVRLittleEndian", *syntaxes]:
            uid = SEG_SYNTAXES[keyword].uid
            deflate = uid == DeflatedExplicitVRLittleEndian
            paths, frames = [], 0
            with Timer() as t:
                for n, (pixels, names) in enumerate(inputs):
                    descriptions = [hd.seg.SegmentDescription(
                        segment_number=k, segment_label=name[:64], segmented_property_category=codes.SCT.Organ,
                        segmented_property_type=codes.SCT.Liver,
                        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                        algorithm_identification=hd.AlgorithmIdentificationSequence(
                            name="bench", family=codes.cid7162.ArtificialIntelligence, version="1"))
                        for k, name in enumerate(names, start=1)]
                    seg = hd.seg.Segmentation(
                        source_images=list(series.datasets), pixel_array=pixels,
                        segmentation_type=hd.seg.SegmentationTypeValues[seg_type],
                        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=1,
                        sop_instance_uid=hd.UID(), instance_number=n + 1, manufacturer="x",
                        manufacturer_model_name="x", software_versions="1", device_serial_number="1",
                        omit_empty_frames=True, transfer_syntax_uid=ExplicitVRLittleEndian if deflate else uid)
                    if deflate:
                        seg.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
                    paths.append(out / f"hd-{seg_type}-{keyword}-{n}.dcm")
                    seg.save_as(paths[-1], enforce_file_format=True)
                    frames += int(seg.NumberOfFrames)
                    del seg
            rows.append({"tool": "highdicom", "type": seg_type, "syntax": keyword, "instances": len(paths),
                         "frames": frames, "mb": _mb(paths), "seconds": round(t.seconds, 2),
                         "total_s": round(t.seconds, 2)})
            for path in paths:
                path.unlink()
    return rows


def rtstruct(series: Any, result: Any, ct_dir: Path, out: Path, plastimatch: bool) -> list[dict[str, Any]]:
    import pydicom
    import SimpleITK as sitk

    from dicom_node.outputs.common import write_dataset
    from dicom_node.outputs.rtstruct.builder import build_rtstruct
    from dicom_node.outputs.rtstruct.contours import ContourOptions
    from segmenter.core.metrics import dice
    from tests.outputs_helpers import identity

    rows = []
    for label, options in (("default (0.5 mm, raster kept)", ContourOptions()),
                           ("tolerance 0 (collinear only)", ContourOptions(tolerance_mm=0.0)),
                           ("0.5 mm, raster not kept", ContourOptions(preserve_raster=False)),
                           ("1.0 mm, raster not kept", ContourOptions(tolerance_mm=1.0, preserve_raster=False))):
        path = out / "rtstruct.dcm"
        with Timer() as t:
            write_dataset(build_rtstruct(series, result, identity(), options), path)
        ds = pydicom.dcmread(path)
        contours = [c for roi in ds.ROIContourSequence for c in roi.get("ContourSequence", [])]
        per_roi = {roi.ROIName: sum(int(c.NumberOfContourPoints) for c in obs.get("ContourSequence", []))
                   for roi, obs in zip(ds.StructureSetROISequence, ds.ROIContourSequence, strict=True)}
        top = max(per_roi, key=lambda k: per_roi[k])
        row: dict[str, Any] = {"options": label, "rois": len(ds.StructureSetROISequence), "contours": len(contours),
                               "points": sum(int(c.NumberOfContourPoints) for c in contours),
                               "most_points": f"{top} {per_roi[top]}",
                               "mb": _mb([path]), "seconds": round(t.seconds, 2)}
        if plastimatch:
            masks = out / "plastimatch"
            proc = subprocess.run(["plastimatch", "convert", "--input", str(path), "--referenced-ct", str(ct_dir),
                                   "--output-prefix", str(masks), "--prefix-format", "nrrd", "--xor-contours"],
                                  capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise SystemExit(f"plastimatch failed: {proc.stderr[-2000:]}")
            reference = result.labels.to_sitk()
            names = {roi.ROINumber: roi.ROIName for roi in ds.StructureSetROISequence}
            label_of = {s.name: s.label for s in result.structures}
            scores = []
            for roi_name in names.values():
                back_path = masks / f"{roi_name}.nrrd"
                if not back_path.is_file() or (roi_name not in label_of and roi_name not in result.extra_masks):
                    continue
                mask = result.extra_masks[roi_name] if roi_name not in label_of else \
                    result.labels.array == label_of[roi_name]
                back = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(back_path)), reference,
                                                            sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
                scores.append(dice(back, mask))
            row.update(dice_min=round(min(scores), 4), dice_median=round(float(np.median(scores)), 4),
                       dice_rois=len(scores))
            for p in masks.iterdir():
                p.unlink()
        rows.append(row)
        path.unlink()
    return rows


def _table(rows: list[dict[str, Any]]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["nsclc", "synthetic", "both"], default="both")
    parser.add_argument("--slices", type=int, default=300, help="slices of the synthetic 117-structure CT")
    parser.add_argument("--skip-highdicom", action="store_true")
    parser.add_argument("--skip-plastimatch", action="store_true")
    parser.add_argument("--skip-seg", action="store_true", help="the RTSTRUCT part only")
    args = parser.parse_args()
    cases = ["nsclc", "synthetic"] if args.case == "both" else [args.case]
    with tempfile.TemporaryDirectory(prefix="bench_segts_") as tmp:
        for case in cases:
            work = Path(tmp) / case
            work.mkdir()
            series, result, ct_dir = nsclc_case() if case == "nsclc" else synthetic_case(work, args.slices)
            count = len(result.structures) + len(result.extra_masks)
            title = (f"{count} structures, NSCLC CT {series.volume.shape}" if case == "nsclc"
                     else f"{count} structures, synthetic CT {series.volume.shape}")
            if not args.skip_seg:
                rows = ours(series, result, work)
                if not args.skip_highdicom:
                    rows += highdicom(series, result, work)
                rows.sort(key=lambda r: (r["type"], list(SYNTAXES["LABELMAP"]).index(r["syntax"])
                                         if r["syntax"] in SYNTAXES["LABELMAP"] else -1, r["tool"] != "ours"))
                print(f"\nSEG, {title}")
                _table(rows)
            print(f"\nRTSTRUCT, {title}")
            _table(rtstruct(series, result, ct_dir, work, not args.skip_plastimatch))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
