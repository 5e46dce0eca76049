"""The DICOM outputs of benchmarks/total117.py's anchor, the way TotalSegmentator makes them.

highdicom for the SEG and rt-utils for the RTSTRUCT, as TotalSegmentator's ``dicom_io.py``
(``save_mask_as_dicomseg``, ``save_mask_as_rtstruct``) does: the series is read with pydicom, one
segment and one ROI per class present. highdicom gets the label map (BINARY, empty frames
omitted), rt-utils one boolean mask per class. rt-utils and its OpenCV are benchmark-only
(``pip install rt-utils``; or a folder with them given with ``--anchor-path``). Prints one JSON line.

    PY _total117_writers.py CT_DIR LABELS.npy OUT_DIR
"""

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def write_seg(datasets: list, labels: np.ndarray, names: dict[int, str], out: Path) -> dict[str, float]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    t0 = time.perf_counter()
    present = [int(v) for v in np.unique(labels) if v != 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint8)
    for n, label in enumerate(present, start=1):
        lut[label] = n
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=names[label], segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Organ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="TotalSegmentator", family=codes.cid7162.ArtificialIntelligence, version="2"))
        for n, label in enumerate(present, start=1)]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=lut[labels], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=123,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="TotalSegmentator",
        manufacturer_model_name="TotalSegmentator", software_versions="2", device_serial_number="1",
        omit_empty_frames=True)
    seg.save_as(out)
    return {"seg_s": time.perf_counter() - t0, "seg_mb": out.stat().st_size / 1e6,
            "seg_frames": int(seg.NumberOfFrames), "segments": len(present)}


def write_rtstruct(ct_dir: Path, labels: np.ndarray, names: dict[int, str], out: Path) -> dict[str, float]:
    from rt_utils import RTStructBuilder

    t0 = time.perf_counter()
    rtstruct = RTStructBuilder.create_new(dicom_series_path=str(ct_dir))
    # rt-utils orders its slices by position along the normal, as the label map's z is ordered
    for label in (int(v) for v in np.unique(labels) if v != 0):
        rtstruct.add_roi(mask=np.ascontiguousarray((labels == label).transpose(1, 2, 0)), name=names[label])
    rtstruct.save(str(out))
    return {"rtstruct_s": time.perf_counter() - t0, "rtstruct_mb": out.stat().st_size / 1e6}


def main() -> None:
    import pydicom

    ct_dir, labels_path, out_dir = (Path(a) for a in sys.argv[1:4])
    labels = np.load(labels_path)
    names = {int(k): v for k, v in json.loads(labels_path.with_suffix(".json").read_text()).items()}
    t0 = time.perf_counter()
    datasets = [pydicom.dcmread(p) for p in sorted(ct_dir.iterdir())]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    res: dict[str, float] = {"read_s": time.perf_counter() - t0}
    res.update(write_seg(datasets, labels, names, out_dir / "highdicom-seg.dcm"))
    del datasets
    res.update(write_rtstruct(ct_dir, labels, names, out_dir / "rtutils-rtstruct.dcm"))
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(res))


if __name__ == "__main__":
    main()
