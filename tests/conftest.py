"""Shared fixtures: paths to the real test data, settings on temporary folders, free ports, databases."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from dicom_node.settings import Settings, parse_settings
from tests.e2e.background import BACKGROUND_PYTEST, PytestRun
from tests.e2e.outage_background import OUTAGE_TEST_FILE, OutageRun

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "SOURCE.md").is_file():
        pytest.fail(f"the shared test data is missing: expected {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def nsclc_ct_files(shared_data: Path) -> list[Path]:
    """The 134 slices of ct/nsclc_lung1_001 in file-name order."""
    files = sorted((shared_data / "ct" / "nsclc_lung1_001" / "ct").glob("*.dcm"))
    if len(files) != 134:
        pytest.fail(f"expected the 134 slices of ct/nsclc_lung1_001, found {len(files)}")
    return files


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_dict(tmp: Path, **sections: Any) -> dict[str, Any]:
    """A valid config document on temporary folders; sections given replace or extend the defaults."""
    data: dict[str, Any] = {
        "node": {"ae_title": "DICOMNODE", "host": "127.0.0.1", "port": free_port(),
                 "storage_dir": str(tmp / "storage"), "database_url": f"sqlite:///{tmp / 'index.sqlite'}",
                 "min_free_disk_mb": 1},
        "completion": {"quiet_seconds": 30, "settle_seconds": 0.5, "after_release_seconds": 0.5,
                       "sweep_interval_seconds": 0.2},
        "worker": {"poll_interval_seconds": 0.2, "stale_after_seconds": 30, "heartbeat_seconds": 0.5,
                   "output_dir": str(tmp / "outputs")},
        "identity": {"uid_root": "1.2.826.0.1.3680043.8.498", "manufacturer": "Test Physics",
                     "manufacturer_model_name": "dicom-autocontour-node", "software_version": "0.1.0",
                     "device_serial_number": "TEST-1"},
        "destinations": [],
        "routing": {"rules": []},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def make_settings(tmp: Path, **sections: Any) -> Settings:
    return parse_settings(settings_dict(tmp, **sections), tmp)


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A fresh schema in the local PostgreSQL 'test' database, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(POSTGRES_URL)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    except sqlalchemy.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 (database 'test') is not reachable: {exc.orig}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


OUTAGE_RUN = pytest.StashKey[OutageRun]()
BACKGROUND_RUNS = pytest.StashKey[dict[str, PytestRun]]()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    _start_background_pytest(config, items)
    _start_outage(config, items)


def _start_background_pytest(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each selected judging test of ``BACKGROUND_PYTEST``: its scenario file starts now in a pytest
    process of its own, and the judging test runs last."""
    selected = sorted({item.path.name for item in items if item.path.name in BACKGROUND_PYTEST})
    if not selected:
        return
    items[:] = [item for item in items if item.path.name not in selected] + \
        [item for item in items if item.path.name in selected]
    runs = {}
    for name in selected:
        work = Path(tempfile.mkdtemp(prefix="background-"))
        with open(work / "pytest.log", "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                                        "--basetemp", str(work / "tmp"), BACKGROUND_PYTEST[name]],
                                       cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        runs[name] = PytestRun(process, work / "pytest.log")
    config.stash[BACKGROUND_RUNS] = runs


def _start_outage(config: pytest.Config, items: list[pytest.Item]) -> None:
    """When the destination-outage test is selected, start its scenario now, in the background, and
    run the test last: the ten minutes of outage pass while the other tests run."""
    outage = [item for item in items if item.path.name == OUTAGE_TEST_FILE]
    if not outage:
        return
    items[:] = [item for item in items if item.path.name != OUTAGE_TEST_FILE] + outage
    work = Path(tempfile.mkdtemp(prefix="outage-"))
    result = work / "result.json"
    with open(work / "scenario.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "tests.e2e.outage_scenario", "--work", str(work / "run"),
                                    "--result", str(result)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    config.stash[OUTAGE_RUN] = OutageRun(process, result, work / "scenario.log")


def pytest_unconfigure(config: pytest.Config) -> None:
    for background in config.stash.get(BACKGROUND_RUNS, {}).values():
        if background.process.poll() is None:
            background.process.kill()
            background.process.wait()
    run = config.stash.get(OUTAGE_RUN, None)
    if run is not None and run.process.poll() is None:
        run.process.kill()
        run.process.wait()
