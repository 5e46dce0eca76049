"""The web admin in headless Chromium (Debian's, driven by Playwright; no browser download).

An admin logs in, adds a real Orthanc as a destination (a wrong port first: the error shows beside
the field), tests it (C-ECHO answered 0x0000), writes a rule and dry-runs it on a stored series;
a viewer sees the series with patient data masked and is refused writes. The pages are
photographed into the test's folder (``scripts/web_screenshots.sh`` copies them to docs/screenshots).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from dicom_node.db.admin_tables import Role
from dicom_node.db.engine import open_index
from dicom_node.live_config import LiveConfig
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.scheduler import sweep
from tests.conftest import make_settings
from tests.peers import Orthanc, require_tool, store_series
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


def test_an_admin_sets_up_a_destination_and_a_rule_and_dry_runs_it(web: WebNode, browser: BrowserContext,
                                                                     orthanc: Orthanc, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    page = browser.new_page()
    _login(page, web, "ada")
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

    page.goto(f"{web.url}/destinations")
    form = page.locator("#destination-form")
    form.locator("input[name=name]").fill("orthanc")
    form.locator("input[name=ae_title]").fill(orthanc.aet)
    form.locator("input[name=host]").fill("127.0.0.1")
    form.locator("input[name=port]").fill("70000")
    form.locator("button[type=submit]").click()
    expect(page.locator(".field-error[data-field=port]")).to_contain_text("65535")
    page.screenshot(path=str(shots / "destination-error.png"), full_page=True)
    form.locator("input[name=port]").fill(str(orthanc.dicom_port))
    form.locator("button[type=submit]").click()
    row = page.locator("#destinations tr", has_text="orthanc")
    expect(row).to_contain_text(f"127.0.0.1:{orthanc.dicom_port}")

    row.locator("button[name=test]").click()
    expect(page.locator("#echo-result")).to_contain_text("status 0x0000")
    page.screenshot(path=str(shots / "destinations.png"), full_page=True)

    page.goto(f"{web.url}/rules")
    rule = page.locator("#rule-form")
    rule.locator("input[name=name]").fill("liver-ct")
    rule.locator("input[name=destinations]").fill("orthanc")
    rule.locator("input[name=match_Modality]").fill("CT")
    rule.locator("button[type=submit]").click()
    expect(page.locator("#rules tr", has_text="liver-ct")).to_contain_text("Modality=CT")

    page.locator("#dry-run-form select[name=series_id]").select_option(index=1)
    page.locator("#dry-run-form button[type=submit]").click()
    result = page.locator("#dry-run-result")
    expect(result.locator("tr.match")).to_contain_text("liver-ct")
    expect(result.locator("tr.nomatch")).to_contain_text("Modality 'CT' does not fit 'MR'")
    expect(result).to_contain_text("1 job(s): liver-ct → builtin → SEG+RTSTRUCT to orthanc")
    page.screenshot(path=str(shots / "rules-dry-run.png"), full_page=True)

    page.goto(f"{web.url}/audit")
    expect(page.locator("#audit")).to_contain_text("rule liver-ct")
    expect(page.locator("#audit")).to_contain_text("destination orthanc")
    page.screenshot(path=str(shots / "audit.png"), full_page=True)


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
