"""The web admin in headless Chromium (Debian's, driven by Playwright; no browser download).

An admin, against a real ``dicom-node serve`` and a real Orthanc, adds the Orthanc as a destination
(a wrong port first: the error shows beside the field), tests it (C-ECHO answered 0x0000), writes a
rule and dry-runs it on a stored series, sends a CT with storescu and sees its job reach the PACS;
then stops the PACS, sends another series, sees its deliveries retry and die, starts the PACS again,
retries them from the page and sees them sent, and finds it all in the audit log. A viewer sees the
series with patient data masked and is refused writes. The pages are photographed into the test's
folder (``scripts/web_screenshots.sh`` copies them to docs/screenshots); the photographed pages show
no patient data of the NSCLC series (the dry run and the series pages show the open dcmqi series).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.db.admin_tables import Role
from dicom_node.db.engine import open_index
from dicom_node.db.tables import Job
from dicom_node.live_config import LiveConfig
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.scheduler import sweep
from dicom_node.settings import load_settings
from tests.conftest import make_settings
from tests.e2e import node_process as npx
from tests.peers import Orthanc, require_tool, start_orthanc, store_series
from tests.web_server import PASSWORD, WebNode, serve_web

pytestmark = pytest.mark.e2e
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RULES = {"rules": [{"name": "mr-brain", "model": "builtin", "destinations": [], "match": {"Modality": "MR"}}]}


@pytest.fixture()
def web(tmp_path: Path, shared_data: Path) -> Iterator[WebNode]:
    settings = make_settings(tmp_path, routing=RULES, completion={"quiet_seconds": 1.0, "settle_seconds": 0.1})
    factory = open_index(settings.node.database_url)
    server = start_listener(settings.node, ReceiverContext(factory=factory, store=InstanceStore(
        settings.node.storage_dir, 1)))
    try:
        store_series(settings.node.port, sorted((shared_data / "ct" / "dcmqi_liver_3slice" / "ct").glob("*.dcm")))
        live, deadline = LiveConfig(settings, factory), time.monotonic() + 15
        while sweep(live.current(), factory) == 0 and not _dispatched(factory):
            assert time.monotonic() < deadline, "the series was not judged complete"
            time.sleep(0.2)
        with serve_web(settings, factory) as node:
            node.add_user("ada", Role.ADMIN)
            node.add_user("vic", Role.VIEWER)
            yield node
    finally:
        server.shutdown()


def _dispatched(factory: object) -> bool:
    from sqlalchemy import select

    from dicom_node.db.tables import Series, SeriesState

    with factory() as session:  # type: ignore[operator]
        return bool(session.scalars(select(Series.id).where(Series.state != SeriesState.RECEIVING)).first())


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    executable = require_tool("chromium")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=executable, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 860})
        try:
            yield context
        finally:
            context.close()


def _login(page: Page, web: WebNode, name: str) -> None:
    page.goto(f"{web.url}/jobs")
    expect(page).to_have_url(f"{web.url}/login")  # every page asks for a login first
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Log in')")
    expect(page.locator("header .who")).to_contain_text(name)


def _reload_until(page: Page, url: str, done: Callable[[], bool], what: str, node: npx.NodeProcess,
                  timeout: float = 120) -> None:
    """Reload ``url`` until ``done()`` holds (the pages do not refresh themselves)."""
    deadline = time.monotonic() + timeout
    while True:
        page.goto(url)
        if done():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen on {url} within {timeout} s; node log:\n{node.log()[-4000:]}")
        page.wait_for_timeout(500)


def _copy_as_new_series(files: list[Path], folder: Path) -> list[Path]:
    """The same slices as another series of the same study (new series and SOP instance UIDs)."""
    folder.mkdir()
    series_uid, out = generate_uid(), []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(folder / path.name)
        ds.save_as(out[-1])
    return out


def _restart(pacs: Orthanc) -> Orthanc:
    """The same Orthanc again: its config, ports and storage."""
    with open(pacs.log_path, "ab") as log:
        process = subprocess.Popen([require_tool("Orthanc"), str(pacs.log_path.parent / "orthanc.json")],
                                   stdout=log, stderr=subprocess.STDOUT)
    again = dataclasses.replace(pacs, process=process)
    deadline = time.monotonic() + 30
    while True:
        try:
            again.rest("/system")
            return again
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "Orthanc did not start again"
            time.sleep(0.2)


def _job_ids(config: Path) -> list[int]:
    with npx.index_of(config)() as session:
        return list(session.scalars(select(Job.id).order_by(Job.id)))


def test_an_admin_sees_series_through_to_the_pacs_and_retries_a_failed_delivery(
        browser: BrowserContext, nsclc_ct_files: list[Path], shared_data: Path, tmp_path: Path) -> None:
    """Everything from the browser: destination, C-ECHO, rule, dry run, a CT sent by storescu to
    ``dicom-node serve`` and its job reaching Orthanc; then Orthanc down, the next series' deliveries
    retrying (attempts, last error) until dead, Orthanc back, *Retry* and *Retry all dead*, sent;
    all of it in the audit log."""
    shots = tmp_path / "screenshots"
    pacs = start_orthanc(tmp_path / "pacs")
    # the node's TOML holds no destination and no rule: the admin makes them in the browser
    config = npx.write_config(tmp_path, pacs, quiet_seconds=3, settle_seconds=0.5, after_release_seconds=0.5)
    config.write_text(config.read_text().split("[[destinations]]")[0])
    node = npx.start(config, "serve")
    try:
        npx.wait_listening(node)
        npx.storescu(node.port, sorted((shared_data / "ct" / "dcmqi_liver_3slice" / "ct").glob("*.dcm")))
        factory = npx.index_of(config)
        with serve_web(load_settings(config), factory) as web:
            web.add_user("ada", Role.ADMIN)
            page = browser.new_page()
            page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before destructive actions
            _login(page, web, "ada")
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
            _add_destination(page, web, pacs, shots)
            _add_rule_and_dry_run(page, web, shots)

            first = nsclc_ct_files[:40]
            npx.storescu(node.port, first)
            study_uid = str(pydicom.dcmread(first[0], stop_before_pixels=True).StudyInstanceUID)
            jobs_table = page.locator("#jobs")
            _reload_until(page, f"{web.url}/jobs", lambda: "done" in jobs_table.inner_text(), "the first job done",
                          node, timeout=240)
            assert len(npx.outputs_in(pacs, study_uid)["SEG"]) == 1
            page.screenshot(path=str(shots / "jobs.png"), full_page=True)

            pacs.stop()
            npx.storescu(node.port, _copy_as_new_series(first, tmp_path / "second"))
            _reload_until(page, f"{web.url}/jobs", lambda: len(_job_ids(config)) == 2, "the second job", node)
            second = _job_ids(config)[1]
            rows = page.locator(f"#deliveries tr:has(a[href='/jobs/{second}'])")

            def retried() -> bool:
                return rows.count() > 0 and int(rows.first.locator("td.attempts").inner_text()) >= 2

            _reload_until(page, f"{web.url}/deliveries", retried, "a delivery tried twice", node, timeout=240)
            expect(rows.first.locator("td.last-error")).not_to_be_empty()
            page.screenshot(path=str(shots / "deliveries-retrying.png"), full_page=True)
            _reload_until(page, f"{web.url}/deliveries", lambda: rows.count() == rows.locator(".state.dead").count(),
                          "every delivery of the second job dead", node, timeout=60)

            pacs = _restart(pacs)
            rows.first.locator("button[name=retry]").click()
            expect(rows.first.locator("span.state")).to_have_text(re.compile("pending|sent"))  # sent at once, maybe
            page.locator("#retry-dead").click()
            expect(page.locator("#delivery-message")).to_contain_text("dead deliveries queued again")
            _reload_until(page, f"{web.url}/deliveries", lambda: rows.count() == rows.locator(".state.sent").count(),
                          "every delivery of the second job sent", node, timeout=120)
            page.screenshot(path=str(shots / "deliveries.png"), full_page=True)
            assert len(npx.outputs_in(pacs, study_uid)["SEG"]) == 2
            _reload_until(page, f"{web.url}/jobs/{second}", lambda: page.locator("h1 .state").inner_text() == "done",
                          "the second job done", node, timeout=60)

            page.goto(f"{web.url}/audit")
            log = page.locator("#audit")
            for entry in ("destination orthanc", "rule chest-ct", "dead deliveries", "delivery ", "login"):
                expect(log).to_contain_text(entry)
            page.screenshot(path=str(shots / "audit.png"), full_page=True)
            for name in ("users", "templates", "models"):
                page.goto(f"{web.url}/{name}")
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    finally:
        node.stop()
        pacs.stop()


def _add_destination(page: Page, web: WebNode, pacs: Orthanc, shots: Path) -> None:
    """A wrong port first (the error beside the field), then the Orthanc with short retries, and its C-ECHO."""
    page.goto(f"{web.url}/destinations")
    form = page.locator("#destination-form")
    for name, value in (("name", "orthanc"), ("ae_title", pacs.aet), ("host", "127.0.0.1"), ("port", "70000"),
                        ("max_age_hours", "0.002"), ("retry_backoff_seconds", "0.5"),
                        ("retry_max_backoff_seconds", "1")):
        form.locator(f"input[name={name}]").fill(value)
    form.locator("button[type=submit]").click()
    expect(page.locator(".field-error[data-field=port]")).to_contain_text("65535")
    page.screenshot(path=str(shots / "destination-error.png"), full_page=True)
    form.locator("input[name=port]").fill(str(pacs.dicom_port))
    form.locator("button[type=submit]").click()
    row = page.locator("#destinations tr", has_text="orthanc")
    expect(row).to_contain_text(f"127.0.0.1:{pacs.dicom_port}")
    row.locator("button[name=test]").click()
    expect(page.locator("#echo-result")).to_contain_text("status 0x0000")
    page.screenshot(path=str(shots / "destinations.png"), full_page=True)


def _add_rule_and_dry_run(page: Page, web: WebNode, shots: Path) -> None:
    """A rule for CT to the Orthanc, dry-run on the series stored before it existed (the dcmqi liver CT)."""
    page.goto(f"{web.url}/rules")
    rule = page.locator("#rule-form")
    rule.locator("input[name=name]").fill("chest-ct")
    rule.locator("input[name=destinations]").fill("orthanc")
    rule.locator("input[name=match_Modality]").fill("CT")
    rule.locator("button[type=submit]").click()
    expect(page.locator("#rules tr", has_text="chest-ct")).to_contain_text("Modality=CT")
    page.locator("#dry-run-form select[name=series_id]").select_option(index=1)
    page.locator("#dry-run-form button[type=submit]").click()
    result = page.locator("#dry-run-result")
    expect(result.locator("tr.match")).to_contain_text("chest-ct")
    expect(result).to_contain_text("1 job(s): chest-ct → builtin → SEG+RTSTRUCT to orthanc")
    page.screenshot(path=str(shots / "rules-dry-run.png"), full_page=True)


def test_a_viewer_is_refused_patient_data_and_writes(web: WebNode, browser: BrowserContext, tmp_path: Path) -> None:
    page = browser.new_page()
    _login(page, web, "vic")
    page.goto(f"{web.url}/series")
    cells = page.locator("#series td.phi")
    expect(cells.first).to_have_text("***")
    assert "99000" not in page.content()
    page.screenshot(path=str(tmp_path / "screenshots" / "series-viewer.png"), full_page=True)
    page.locator("#series a").first.click()
    assert "JANCT000" not in page.content() and "03086212" not in page.content()
    page.goto(f"{web.url}/destinations")
    assert page.locator("#destination-form").count() == 0  # no editor for a viewer
    token = page.locator("meta[name=csrf-token]").get_attribute("content") or ""
    refused = page.request.post(f"{web.url}/destinations", form={"csrf_token": token, "name": "x", "ae_title": "X",
                                                                 "host": "h", "port": "104"})
    assert refused.status == 403
    assert page.request.get(f"{web.url}/api/series?patient_id=99000").status == 403
