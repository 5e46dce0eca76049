"""A job past its pipeline with delivery rows, made through the node's own SQL (db/index, db/jobs)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import index, jobs
from dicom_node.db.index import InstanceMeta
from dicom_node.db.tables import Delivery
from dicom_node.routing import SeriesAttributes, route
from dicom_node.settings import Settings

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def job_with_deliveries(settings: Settings, factory: sessionmaker[Session], objects: list[tuple[str, str]]) -> int:
    """A job past its pipeline, routed to the settings' PACS, with one delivery per (SOP UID, path)."""
    meta = InstanceMeta(sop_uid="1.2.3.4.1", sop_class_uid=CT_CLASS, transfer_syntax_uid="1.2.840.10008.1.2.1",
                        study_uid="1.2.3", series_uid="1.2.3.4", patient_key="P", modality="CT", instance_number=1,
                        slice_position=0.0)
    index.record_instance(factory, meta, "/x/1.dcm", 10, None)
    (action,) = route(settings, SeriesAttributes(Modality="CT"))
    with factory.begin() as s:
        (view,) = index.receiving_series(s)
        job = jobs.enqueue(s, view.id, view.series_uid, action, 1)
        assert job is not None
        s.flush()
        job_id = job.id
    assert jobs.claim(factory, "pipeline") == job_id
    jobs.add_deliveries(factory, job_id, [Delivery(destination="PACS", kind="CT", sop_uid=uid, sop_class_uid=CT_CLASS,
                                                   path=path) for uid, path in objects])
    return job_id


def sop_uids_and_paths(files: list[Path]) -> list[tuple[str, str]]:
    return [(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID), str(f)) for f in files]
