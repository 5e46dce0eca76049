"""End to end with a learned model: an nnU-Net v2 folder (generated, random weights) is imported
with ``segmenter models import``, named in a routing rule, and runs in the node's worker;
storescu -> node -> Orthanc, with the model id, version and device recorded and carried."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from dicom_node.db.tables import Job, JobStatus
from tests.e2e import node_process as npx
from tests.nnunet_fixtures import ModelSpec, make_model_folder
from tests.peers import Orthanc, dciodvfy_errors

pytestmark = pytest.mark.e2e


def test_generated_nnunet_model_runs_through_the_node(orthanc: Orthanc, nsclc_ct_files: list[Path],
                                                      tmp_path: Path) -> None:
    spec = ModelSpec("E2ETiny", spacing=(3.0, 3.0, 3.0), patch=(32, 64, 64), n_classes=4, features=(4, 8, 16),
                     seed=3)
    folder = make_model_folder(tmp_path / "nnunet", spec)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"1": "Lung_L", "2": "Lung_R", "3": "SpinalCord"}))
    models_dir = tmp_path / "models"
    imported = subprocess.run([sys.executable, "-m", "segmenter.cli", "models", "import", str(folder),
                               "--id", "tinynet", "--models-dir", str(models_dir), "--labels", str(labels)],
                              capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr

    files = sorted(nsclc_ct_files, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))[50:80]
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    before = npx.outputs_in(orthanc, study_uid)
    config = npx.write_config(tmp_path, orthanc, model="tinynet", models_dir=models_dir)
    node = npx.start(config, "serve")
    try:
        npx.wait_listening(node)
        npx.storescu(node.port, files)
        found = npx.wait_for_outputs(orthanc, study_uid, node, timeout=300)
    finally:
        node.stop()
    new = {k: sorted(set(found[k]) - set(before[k])) for k in found}
    assert len(new["SEG"]) == 1 and len(new["RTSTRUCT"]) == 1, (new, node.log()[-3000:])

    seg_path = npx.fetch(orthanc, new["SEG"][0], tmp_path / "seg.dcm")
    assert dciodvfy_errors(seg_path).errors == []
    seg = pydicom.dcmread(seg_path)
    algorithms = {(s.SegmentAlgorithmName, s.SegmentAlgorithmType) for s in seg.SegmentSequence}
    assert algorithms == {("tinynet", "AUTOMATIC")}
    rt = pydicom.dcmread(npx.fetch(orthanc, new["RTSTRUCT"][0], tmp_path / "rt.dcm"))
    assert all("tinynet 1" in r.ROIDescription for r in rt.StructureSetROISequence)

    with npx.index_of(config)() as s:
        job = s.scalars(select(Job)).one()
    assert job.status == JobStatus.DONE, job.error_message
    assert (job.model_id, job.model_version, job.device) == ("tinynet", "1", "cpu")
