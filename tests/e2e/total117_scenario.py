"""117 classes through the node: a five-part model shaped like TotalSegmentator's ``total``
(``tests.totalseg_model``: its parts, label ids and names, PlainConvUNet stages and NoMirroring
checkpoints; random weights) is imported with ``segmenter models import`` in its own process,
named in a routing rule, and a 512x512x300 CT is sent with storescu; the SEG and the RTSTRUCT are
checked in Orthanc.

To fit the suite's time on a 2-core machine the parts carry the plans of TotalSegmentator's
``--fastest`` model (6 mm, five stages, patch 112^3: one tile per part) instead of the 1.5 mm
ones (27 tiles of 128^3 per part on this CT, about half an hour on 2 cores), and are imported
with TotalSegmentator's tile step 0.8 and no mirroring. Everything else is the true shape: five
parts, 117 output classes, the export of every class's logits to the 512x512x300 grid, the merge,
117 possible segments and ROIs. ``benchmarks/total117.py`` runs the 1.5 mm plans. Measured on
the 2-core VM (shared, load average 5 to 8): 366 s in all, of which the five parts 272 s.

The suite runs this file in a pytest process of its own, started in the background when the session
starts (tests/conftest.py), so its minutes of CPU overlap the many tests that mostly wait;
``test_total117_through_node.py`` judges that run at the end. Run it alone with
``.venv/bin/python -m pytest tests/e2e/total117_scenario.py``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from sqlalchemy import select

from dicom_node.db.tables import Job, JobStatus
from segmenter.models.manifest import read_manifest
from tests.e2e import node_process as npx
from tests.peers import Orthanc
from tests.totalseg_model import Series, make_total_parts, write_ct_series

pytestmark = pytest.mark.e2e


def test_five_part_117_class_model_through_the_node(orthanc: Orthanc, tmp_path: Path) -> None:
    t0 = time.monotonic()
    parts = make_total_parts(tmp_path / "total", "6mm")
    models_dir = tmp_path / "models"
    imported = subprocess.run([sys.executable, "-m", "segmenter.cli", "models", "import", str(tmp_path / "total"),
                               "--id", "total", "--model-version", "2.0.0", "--models-dir", str(models_dir),
                               "--tile-step", "0.8", "--no-mirroring"],
                              capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr
    manifest = read_manifest(models_dir / "total")
    assert [Path(p.folder).parent.name[:10] for p in manifest.parts] == [
        f"Dataset{i}" for i in range(291, 296)] == [p.parent.name[:10] for p in parts]
    assert [len(p.labels) for p in manifest.parts] == [24, 26, 18, 23, 26]
    possible = manifest.structures()
    assert len(possible) == 117

    files = write_ct_series(tmp_path / "ct", Series(slices=300))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    config = npx.write_config(tmp_path, orthanc, model="total", models_dir=models_dir, quiet_seconds=2)
    node = npx.start(config, "serve")
    try:
        npx.wait_listening(node)
        npx.storescu(node.port, files)
        found = npx.wait_for_outputs(orthanc, study_uid, node, timeout=900)
    finally:
        node.stop()
    log = node.log()
    assert len(found["SEG"]) == 1 and len(found["RTSTRUCT"]) == 1, (found, node.log()[-3000:])

    [job_folder] = npx.job_dir(config)
    names = npx.read_structures(job_folder)["labels"]  # label id -> structure, as the worker merged the parts
    assert list(names.values()) == possible
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(job_folder / "labels.nii.gz")))
    assert labels.shape == (300, 512, 512)
    present = {names[str(v)] for v in np.unique(labels) if v != 0}
    assert len(present) >= 20, present  # random weights: not every class wins somewhere
    seg = pydicom.dcmread(npx.fetch(orthanc, found["SEG"][0], tmp_path / "seg.dcm"), stop_before_pixels=True)
    segments = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    assert len(segments) == len(set(segments)) and set(segments) <= set(possible)
    assert {(s.SegmentAlgorithmName, s.SegmentAlgorithmType) for s in seg.SegmentSequence} == {("total", "AUTOMATIC")}
    rt = pydicom.dcmread(npx.fetch(orthanc, found["RTSTRUCT"][0], tmp_path / "rt.dcm"))
    rois = [str(r.ROIName) for r in rt.StructureSetROISequence]
    assert len(rois) == len(set(rois)) and set(rois) <= set(possible)
    # every structure in the label map is a segment and an ROI, and the segments are in the model's merge order
    assert set(segments) == set(rois) == present
    order = {n: i for i, n in enumerate(possible)}
    assert segments == sorted(segments, key=order.__getitem__)
    assert all("total 2.0.0" in str(r.ROIDescription) for r in rt.StructureSetROISequence)
    assert all(len(c.ContourSequence) > 0 for c in rt.ROIContourSequence)

    with npx.index_of(config)() as s:
        job = s.scalars(select(Job)).one()
    assert job.status == JobStatus.DONE, job.error_message
    assert (job.model_id, job.model_version, job.device) == ("total", "2.0.0", "cpu")
    timings = json.loads(job.timings)
    assert all(f"part {i} ({i + 1}/5) took" in log for i in range(5)) and "merge of 5 part(s) took" in log
    print("\n".join(line for line in log.splitlines() if " took " in line or "preprocess" in line))
    print(f"total117 e2e: {time.monotonic() - t0:.0f} s in all; job stages {timings}; "
          f"{len(present)} structures, {len(segments)} segments, {len(rois)} ROIs")
