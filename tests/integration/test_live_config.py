"""The listener's completion sweep routes with the live config: a rule added in the index after start applies
to the next complete series, with no restart (real association, real scheduler, SQLite)."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import select

from dicom_node.db import config_store
from dicom_node.db.engine import open_index
from dicom_node.db.tables import Job, Series
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.scheduler import start_scheduler
from tests.conftest import make_settings
from tests.peers import store_series

MR_ONLY = {"rules": [{"name": "mr", "model": "builtin", "destinations": [], "match": {"Modality": "MR"}}]}


def test_a_rule_added_after_start_routes_the_next_series(tmp_path: Path, shared_data: Path) -> None:
    settings = make_settings(tmp_path, routing=MR_ONLY,
                             completion={"quiet_seconds": 0.5, "settle_seconds": 0.1, "sweep_interval_seconds": 0.2})
    factory = open_index(settings.node.database_url)
    server = start_listener(settings.node, ReceiverContext(factory=factory, store=InstanceStore(
        settings.node.storage_dir, 1)))
    scheduler = start_scheduler(settings, factory)  # seeds the live config from the settings (the TOML)
    try:
        with factory.begin() as session:
            tables = config_store.read(session)
            assert [r["name"] for r in tables["rule"]] == ["mr"]
            ct = {"name": "ct", "model": "builtin", "destinations": [], "match": {"Modality": "CT"}}
            config_store.replace(session, {"rule": [*tables["rule"], ct]})
        store_series(settings.node.port, sorted((shared_data / "ct" / "dcmqi_liver_3slice" / "ct").glob("*.dcm")))
        deadline = time.monotonic() + 15
        while True:
            with factory() as session:
                rules = session.scalars(select(Job.rule_name)).all()
                state = session.scalars(select(Series.state)).first()
            if rules or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert list(rules) == ["ct"], f"series state {state}"
    finally:
        scheduler.shutdown(wait=False)
        server.shutdown()
