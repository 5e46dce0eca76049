"""``dicom-node jobs`` as a user runs it: model id and version, device, and why a delivery is still retrying."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dicom_node.db import deliveries, index, jobs
from dicom_node.db.engine import open_index
from dicom_node.db.index import InstanceMeta
from dicom_node.db.tables import Delivery, JobStatus
from dicom_node.routing import RoutedAction
from tests.conftest import REPO

UNREACHABLE = "PACS (ORTHANC@127.0.0.1:9) cannot be reached"


def test_jobs_shows_model_version_device_and_the_last_error_of_a_retrying_delivery(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'index.sqlite'}"
    text = (REPO / "config" / "node.example.toml").read_text()
    text = text.replace('"sqlite:///../var/index.sqlite"', f'"{database}"')
    text = text.replace('"../var/storage"', f'"{tmp_path / "storage"}"')
    assert database in text
    config = tmp_path / "node.toml"
    config.write_text(text)

    factory = open_index(database)
    meta = InstanceMeta(sop_uid="1.2.3.4.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                        transfer_syntax_uid="1.2.840.10008.1.2.1", study_uid="1.2.3", series_uid="1.2.3.4",
                        patient_key="P", modality="CT", instance_number=1, slice_position=0.0)
    index.record_instance(factory, meta, "/x/1.dcm", 10, None)
    retrying_action = RoutedAction(rule_name="ct", model_id="builtin", outputs=("SEG", "RTSTRUCT"), seg_type="BINARY")
    with factory.begin() as s:
        (view,) = index.receiving_series(s)
        retrying = jobs.enqueue(s, view.id, view.series_uid, retrying_action, 1)
        failing = jobs.enqueue(s, view.id, view.series_uid, retrying_action.model_copy(update={"rule_name": "x"}), 1)
        assert retrying is not None and failing is not None
        s.flush()
        retrying_id, failing_id = retrying.id, failing.id
    jobs.set_model(factory, retrying_id, "2.1.0", "cuda:0")
    jobs.add_deliveries(factory, retrying_id, [
        Delivery(destination="PACS", kind="SEG", sop_uid="9.1", sop_class_uid="1.2", path="/o/seg.dcm"),
        Delivery(destination="PACS", kind="RTSTRUCT", sop_uid="9.2", sop_class_uid="1.3", path="/o/rtstruct.dcm"),
    ])
    with factory() as s:
        seg, rtstruct = jobs.deliveries_of(s, retrying_id)
    jobs.mark_sent(factory, seg.id)
    status = deliveries.record_failure(factory, rtstruct.id, "", UNREACHABLE, deliveries.RetryPolicy(60))
    assert status.value == "pending"
    jobs.finish(factory, failing_id, JobStatus.FAILED, error=ValueError("bad series"))
    factory.kw["bind"].dispose()

    proc = subprocess.run([sys.executable, "-m", "dicom_node.cli", "jobs", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    header, *lines = proc.stdout.splitlines()
    assert header.split()[:8] == ["id", "status", "stage", "model", "version", "device", "n", "tries"]
    by_id = {int(line.split()[0]): line for line in lines}
    assert by_id.keys() == {retrying_id, failing_id}
    line = by_id[retrying_id]
    assert line.split()[1:6] == ["delivering", "delivering", "builtin", "2.1.0", "cuda:0"]
    assert line.endswith(f"1/2 delivered, 1 pending; retrying RTSTRUCT to PACS: {UNREACHABLE}")
    assert by_id[failing_id].split()[1:6] == ["failed", "failed", "builtin", "-", "-"]  # never loaded a model
    assert by_id[failing_id].endswith("ValueError: bad series")
