"""The web admin's operator and admin pages over real HTTP, on an index filled by a real association.

Deliveries (per destination, *Retry* one, *Retry all dead*), re-running a job with another rule,
the order of destinations, templates with field errors, the models page and its *Check* (a real
``segmenter models check`` on a generated nnU-Net model), users managed in the browser (add, role,
disable, password reset, API tokens), the accession-number search, and the /metrics counters
(instances and bytes received, which a purge does not lower; associations accepted and rejected).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from dicom_node.db import audit, deliveries, jobs, retention
from dicom_node.db.admin_tables import Role
from dicom_node.db.engine import open_index
from dicom_node.db.tables import Delivery, DeliveryStatus, Job, JobStatus, Series
from dicom_node.live_config import LiveConfig
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.scheduler import sweep
from segmenter.cli import main as segmenter_main
from tests.conftest import REPO, make_settings
from tests.nnunet_fixtures import ModelSpec, make_model_folder
from tests.peers import require_tool, store_series
from tests.web_server import PASSWORD, WebNode, serve_web

RULES = {"rules": [{"name": "ct", "model": "builtin", "destinations": ["pacs"], "match": {"Modality": "CT"}},
                   {"name": "mr", "model": "builtin", "destinations": ["pacs"], "match": {"Modality": "MR"}}]}
DESTINATIONS = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}]
ACCESSION = "03086212"  # of the dcmqi liver series


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    source = make_model_folder(root / "src", ModelSpec("web", n_classes=3, folds=(0,)))
    assert segmenter_main(["models", "import", str(source), "--id", "liver", "--models-dir", str(root / "models")]) == 0
    return root / "models"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, models_dir: Path) -> Iterator[WebNode]:
    tmp = tmp_path_factory.mktemp("admin")
    settings = make_settings(tmp, routing=RULES, destinations=DESTINATIONS, models={"dir": str(models_dir)},
                             node={"allowed_calling_aes": ["TESTSCU"]},
                             completion={"quiet_seconds": 1.0, "settle_seconds": 0.1})
    factory = open_index(settings.node.database_url)
    server = start_listener(settings.node, ReceiverContext(factory=factory, store=InstanceStore(
        settings.node.storage_dir, 1)))
    try:
        store_series(settings.node.port, sorted((shared_data / "ct" / "dcmqi_liver_3slice" / "ct").glob("*.dcm")))
        refused = subprocess.run([require_tool("echoscu"), "-aet", "INTRUDER", "-aec", "DICOMNODE", "127.0.0.1",
                                  str(settings.node.port)], capture_output=True, timeout=30)
        assert refused.returncode != 0  # the calling AE is not allowed
        deadline = time.monotonic() + 15
        while not sweep(LiveConfig(settings, factory).current(), factory):
            assert time.monotonic() < deadline, "the series was not dispatched"
            time.sleep(0.2)
        with serve_web(settings, factory) as node:
            node.add_user("ada", Role.ADMIN)
            node.add_user("phil", Role.PHYSICIST)
            node.add_user("vic", Role.VIEWER)
            yield node
    finally:
        server.shutdown()


def _job(web: WebNode) -> Job:
    with web.factory() as session:
        job = session.scalars(select(Job).order_by(Job.id)).first()
        assert job is not None
        return job


def _audited(web: WebNode, action: str) -> list[tuple[str, str, dict[str, object]]]:
    with web.factory() as session:
        return [(e.actor, e.target, e.details) for e in audit.recent(session, 500, action)]


def _dead_and_pending(web: WebNode) -> tuple[int, int]:
    """The first job's outputs recorded (as the worker records them) and one try of each failed: the
    SEG's row dead (its max age passed), the RTSTRUCT's pending with a back-off."""
    job = _job(web)
    rows = [Delivery(destination="pacs", kind=kind, sop_uid=f"1.2.3.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                     path=f"/nowhere/{kind}.dcm") for n, kind in enumerate(("SEG", "RTSTRUCT"))]
    jobs.add_deliveries(web.factory, job.id, rows)
    with web.factory() as session:
        ids = [d.id for d in jobs.deliveries_of(session, job.id)]
    gone = deliveries.RetryPolicy(60.0, max_age=timedelta(0))
    later = deliveries.RetryPolicy(3600.0, max_age=timedelta(hours=1))
    assert deliveries.record_failure(web.factory, ids[0], "", "connection refused", gone) == DeliveryStatus.DEAD
    assert deliveries.record_failure(web.factory, ids[1], "", "connection refused", later) == DeliveryStatus.PENDING
    jobs.settle_job(web.factory, job.id)
    return ids[0], ids[1]


def test_deliveries_per_destination_retry_one_and_all_dead(web: WebNode) -> None:
    dead, pending = _dead_and_pending(web)
    client, csrf = web.login("phil")
    assert client.get("/api/deliveries/by-destination").json() == {"pacs": {"pending": 1, "sent": 0, "dead": 1}}
    page = client.get("/deliveries").text
    assert "connection refused" in page and 'id="retry-dead"' in page
    # Retry on the page: the dead one is queued again, its job delivers again
    assert client.post(f"/deliveries/{dead}/retry", data={"csrf_token": csrf}).status_code == 303
    with web.factory() as session:
        row = session.get(Delivery, dead)
        assert row is not None and row.status == DeliveryStatus.PENDING and row.job is not None
        assert row.job.status == JobStatus.DELIVERING
    # a pending one is made due now; a missing one is 404
    before = client.get("/api/deliveries", params={"status": "pending"}).json()
    retried = client.post(f"/api/deliveries/{pending}/retry", headers={"X-CSRF-Token": csrf}).json()
    assert retried["message"] == f"delivery {pending}: due now"
    after = {d["id"]: d for d in client.get("/api/deliveries", params={"status": "pending"}).json()}
    assert after[pending]["next_attempt_at"] < next(d for d in before if d["id"] == pending)["next_attempt_at"]
    assert client.post("/api/deliveries/999999/retry", headers={"X-CSRF-Token": csrf}).status_code == 404
    # both dead again, then Retry all dead
    for delivery_id in (dead, pending):
        deliveries.mark_dead(web.factory, delivery_id, "association rejected")
    page = client.post("/deliveries/retry-dead", data={"csrf_token": csrf}).text
    assert "2 dead deliveries queued again" in page
    assert client.get("/api/deliveries/by-destination").json()["pacs"]["dead"] == 0
    viewer, viewer_csrf = web.login("vic")
    assert viewer.post("/api/deliveries/retry-dead", headers={"X-CSRF-Token": viewer_csrf}).status_code == 403
    targets = [target for actor, target, _ in _audited(web, "retry") if actor == "phil"]
    assert {f"delivery {dead}", f"delivery {pending}", "dead deliveries"} <= set(targets)


def test_a_job_is_re_run_with_another_rule(web: WebNode) -> None:
    job = _job(web)
    client, csrf = web.login("phil")
    assert f'action="/jobs/{job.id}/rerun"' in client.get(f"/jobs/{job.id}").text
    reply = client.post(f"/jobs/{job.id}/rerun", data={"csrf_token": csrf, "rule": "mr"})
    assert reply.status_code == 303
    new_id = int(reply.headers["location"].rsplit("/", 1)[1])
    with web.factory() as session:
        new = session.get(Job, new_id)
        assert new is not None and (new.rule_name, new.status, new.series_id) == ("mr", JobStatus.QUEUED, job.series_id)
        assert jobs.parse_action(new.id, new.action).destinations[0].name == "pacs"
    again = client.post(f"/api/jobs/{job.id}/rerun", json={"rule": "mr"}, headers={"X-CSRF-Token": csrf})
    assert again.status_code == 409  # the same re-run once
    assert client.post(f"/api/jobs/{job.id}/rerun", json={"rule": "nope"},
                       headers={"X-CSRF-Token": csrf}).status_code == 404
    assert client.post("/api/jobs/999999/rerun", json={"rule": "mr"}, headers={"X-CSRF-Token": csrf}).status_code \
        == 404
    viewer, viewer_csrf = web.login("vic")
    assert viewer.post(f"/api/jobs/{job.id}/rerun", json={"rule": "ct"},
                       headers={"X-CSRF-Token": viewer_csrf}).status_code == 403
    assert ("phil", f"job {job.id}", {"rule": "mr", "new_job": new_id, "rule_matches_series": False}) in \
        _audited(web, "rerun")


def test_destinations_keep_the_order_an_admin_gives_them(web: WebNode) -> None:
    client, csrf = web.login("ada")
    assert client.put("/api/destinations/tps", json={"ae_title": "TPS", "host": "127.0.0.1", "port": 2},
                      headers={"X-CSRF-Token": csrf}).json()["ok"]
    assert [d["name"] for d in client.get("/api/destinations").json()] == ["pacs", "tps"]
    assert client.post("/destinations/tps/up", data={"csrf_token": csrf}).status_code == 303
    assert [d["name"] for d in client.get("/api/destinations").json()] == ["tps", "pacs"]
    page = client.get("/destinations").text
    assert page.index("127.0.0.1:2") < page.index("127.0.0.1:1<")
    assert list(LiveConfig(web.settings, web.factory).current().destinations) == ["tps", "pacs"]
    moved = client.post("/api/destinations/tps/move", json={"offset": 1}, headers={"X-CSRF-Token": csrf}).json()
    assert moved["ok"] and [d["name"] for d in client.get("/api/destinations").json()] == ["pacs", "tps"]
    assert client.post("/api/destinations/nowhere/move", json={"offset": 1},
                       headers={"X-CSRF-Token": csrf}).status_code == 404
    changes = [d for _, target, d in _audited(web, "config-change") if target == "destination tps"]
    assert {"position": [1, 0]} in [c["diff"] for c in changes if c["change"] == "moved"]


def test_templates_are_created_edited_and_deleted_with_field_errors(web: WebNode) -> None:
    client, csrf = web.login("ada")
    form = {"csrf_token": csrf, "name": "lungs", "include": "Lung_L, SpinalCord",
            "merge": "Lung_L = Lung_LUL, Lung_LLL", "rename": "SpinalCord = Cord", "seg_type": "SQUARE",
            "map": "Femur_L = Femur_Head_L"}
    bad = client.post("/templates", data=form)
    assert bad.status_code == 400
    assert re.search(r'data-field="seg_type">[^<]*BINARY', bad.text), bad.text[-2000:]
    broken = client.post("/templates", data={**form, "seg_type": "", "merge": "Lung_L Lung_LUL"})
    assert broken.status_code == 400 and 'data-field="merge"' in broken.text
    unknown = client.post("/templates", data={**form, "seg_type": "", "map": "Femur_L = Femur_Head_X"})
    assert unknown.status_code == 400 and re.search(r'data-field="map">[^<]*Femur_Head_X', unknown.text)
    assert client.post("/templates", data={**form, "seg_type": "", "outputs": ["SEG"]}).status_code == 303
    stored = client.get("/api/templates").json()
    assert stored == [{"name": "lungs", "map": {"Femur_L": "Femur_Head_L"}, "include": ["Lung_L", "SpinalCord"],
                       "merge": {"Lung_L": ["Lung_LUL", "Lung_LLL"]},
                       "rename": {"SpinalCord": "Cord"}, "outputs": ["SEG"], "seg_type": ""}]
    edit = client.get("/templates", params={"edit": "lungs"}).text
    assert "Femur_L = Femur_Head_L" in edit
    assert "Lung_L = Lung_LUL, Lung_LLL" in edit and 'name="original_name" value="lungs"' in edit
    assert client.post("/templates", data={**form, "seg_type": "LABELMAP", "original_name": "lungs",
                                           "name": "chest"}).status_code == 303
    assert [t["name"] for t in client.get("/api/templates").json()] == ["chest"]
    # a template a rule uses cannot be deleted
    assert client.put("/api/rules/chest-ct", json={"model": "builtin", "destinations": ["pacs"], "template": "chest",
                                                   "match": {"Modality": "CT"}},
                      headers={"X-CSRF-Token": csrf}).json()["ok"]
    refused = client.post("/templates/chest/delete", data={"csrf_token": csrf})
    assert refused.status_code == 400 and "chest" in refused.text
    assert client.delete("/api/rules/chest-ct", headers={"X-CSRF-Token": csrf}).json()["ok"]
    assert client.delete("/api/templates/chest", headers={"X-CSRF-Token": csrf}).json()["ok"]
    assert client.get("/api/templates").json() == []
    assert client.delete("/api/templates/chest", headers={"X-CSRF-Token": csrf}).status_code == 404
    assert [d["change"] for _, t, d in _audited(web, "config-change") if t.startswith("template")][:3] == \
        ["deleted", "edited", "added"]


def test_the_models_page_lists_the_registry_and_checks_a_model(web: WebNode, models_dir: Path) -> None:
    client, csrf = web.login("ada")
    listed = {m["id"]: m for m in client.get("/api/models").json()}
    assert set(listed) == {"builtin", "liver"}
    liver = listed["liver"]
    assert liver["kind"] == "nnunet_v2" and liver["version"]
    assert liver["parts"] == ["part 0: 3d_fullres, folds 0"] and liver["size_bytes"] > 1000
    page = client.post("/models/liver/check", data={"csrf_token": csrf}).text
    assert re.search(r'id="check-result"[^>]*>liver: liver .*ok \(nnunet_v2, 1 weight file\(s\) verified', page), \
        page[-1500:]
    checkpoint = next(models_dir.parent.rglob("checkpoint_final.pth"))
    original = checkpoint.read_bytes()
    try:
        checkpoint.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        failed = client.post("/api/models/liver/check", headers={"X-CSRF-Token": csrf}).json()
    finally:
        checkpoint.write_bytes(original)
    assert failed["ok"] is False and "checksum mismatch" in failed["message"]
    assert client.post("/api/models/nothing/check", headers={"X-CSRF-Token": csrf}).json()["ok"] is False
    # listing the registry imports no torch into the web process (the check runs in a child process)
    probe = ("import sys; from pathlib import Path; import dicom_node.web.app; "
             "from dicom_node.web import model_registry; "
             f"assert model_registry.list_models(Path({str(models_dir)!r}))[1].id == 'liver'; "
             "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    physicist, physicist_csrf = web.login("phil")
    assert physicist.post("/api/models/liver/check", headers={"X-CSRF-Token": physicist_csrf}).status_code == 403
    assert [d["ok"] for a, t, d in _audited(web, "model-check") if t == "model liver"][:2] == [False, True]


def test_an_admin_manages_users_in_the_browser(web: WebNode) -> None:
    client, csrf = web.login("ada")
    assert "at least 8" in client.post("/users", data={"csrf_token": csrf, "name": "rita", "role": "viewer",
                                                       "password": "short"}).text
    added = client.post("/users", data={"csrf_token": csrf, "name": "rita", "role": "viewer", "password": PASSWORD})
    assert added.status_code == 200 and "user rita added (viewer)" in added.text
    rita, _ = web.login("rita")
    assert rita.get("/api/audit").status_code == 403
    assert client.post("/users/rita/role", data={"csrf_token": csrf, "role": "physicist"}).status_code == 303
    assert rita.get("/api/audit").status_code == 200  # the new role holds at once
    # a password reset ends the user's sessions; the new password logs in
    assert client.post("/users/rita/password", data={"csrf_token": csrf, "password": "a new long secret"}) \
        .status_code == 303
    assert rita.get("/api/jobs").status_code == 401
    web.login("rita", "a new long secret")
    # an API token: shown once, works without CSRF, stops when revoked
    page = client.post("/users/rita/token", data={"csrf_token": csrf}).text
    match = re.search(r'<code id="new-token">([^<]+)</code>', page)
    assert match is not None
    bearer = {"Authorization": f"Bearer {match.group(1)}"}
    assert httpx.get(f"{web.url}/api/jobs", headers=bearer).status_code == 200
    rows = {u["name"]: u for u in client.get("/api/users").json()}
    token_id = rows["rita"]["tokens"][0]["id"]
    assert rows["rita"]["tokens"][0]["last_used_at"] is not None and rows["rita"]["role"] == "physicist"
    assert client.post("/users/rita/revoke", data={"csrf_token": csrf, "token_id": str(token_id)}).status_code == 303
    assert httpx.get(f"{web.url}/api/jobs", headers=bearer).status_code == 401
    # disable and enable
    assert client.post("/users/rita/disable", data={"csrf_token": csrf}).status_code == 303
    login = httpx.Client(base_url=web.url, timeout=30)
    token = login.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    assert login.post("/login", data={"username": "rita", "password": "a new long secret",
                                      "csrf_token": token}).status_code == 401
    assert client.patch("/api/users/rita", json={"disabled": False}, headers={"X-CSRF-Token": csrf}).json()["ok"]
    web.login("rita", "a new long secret")
    # the last enabled admin can be neither demoted nor disabled
    refused = client.post("/users/ada/role", data={"csrf_token": csrf, "role": "viewer"})
    assert refused.status_code == 400 and "last enabled admin" in refused.text
    assert client.patch("/api/users/ada", json={"disabled": True}, headers={"X-CSRF-Token": csrf}).status_code == 409
    assert client.patch("/api/users/nobody", json={"disabled": True}, headers={"X-CSRF-Token": csrf}).status_code \
        == 404
    phil, phil_csrf = web.login("phil")
    assert phil.post("/users", data={"csrf_token": phil_csrf, "name": "x", "role": "admin",
                                     "password": PASSWORD}).status_code == 403
    done = {action for action in ("user-add", "user-role", "user-password", "token-add", "token-revoke",
                                  "user-disable", "user-enable") if ("ada", "rita") in
            [(a, t) for a, t, _ in _audited(web, action)]}
    assert len(done) == 7, done
    assert PASSWORD not in str(_audited(web, "user-add")) and "a new long secret" not in str(
        _audited(web, "user-password"))


def test_series_are_found_by_accession_number_by_roles_that_see_it(web: WebNode) -> None:
    phil, _ = web.login("phil")
    found = phil.get("/api/series", params={"accession": ACCESSION}).json()
    assert len(found) == 1 and found[0]["accession_number"] == ACCESSION
    assert phil.get("/api/series", params={"accession": "nothing"}).json() == []
    assert ACCESSION in phil.get("/series", params={"accession": ACCESSION}).text
    vic, _ = web.login("vic")
    assert [s["accession_number"] for s in vic.get("/api/series").json()] == ["***"]
    assert vic.get("/api/series", params={"accession": ACCESSION}).status_code == 403
    assert ACCESSION not in vic.get("/series").text


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


def test_metrics_count_what_was_received_and_who_was_refused(web: WebNode) -> None:
    text = httpx.get(f"{web.url}/metrics").text
    assert _metric(text, "dicom_node_instances_received_total") == 3.0
    received = _metric(text, "dicom_node_received_bytes_total")
    assert received == _metric(text, "dicom_node_instance_bytes") > 0
    assert _metric(text, 'dicom_node_association_results_total{result="accepted"}') >= 1
    assert _metric(text, 'dicom_node_association_results_total{result="rejected"}') == 1
    assert 'dicom_node_series_completed{reason=' in text
    # the series fully delivered, housekeeping's purge empties the index of it; the counters stay
    with web.factory() as session:
        job_ids = list(session.scalars(select(Job.id)))
        unsent = list(session.scalars(select(Delivery.id).where(Delivery.status != DeliveryStatus.SENT)))
    for delivery_id in unsent:
        jobs.mark_sent(web.factory, delivery_id)
    for job_id in job_ids:
        jobs.finish(web.factory, job_id, JobStatus.DONE)
    with web.factory.begin() as session:
        series = session.scalars(select(Series)).one()
        candidate = retention.SeriesCandidate(series.id, series.instance_count, 3, 0, series.last_received_at)
        assert retention.purge_series(session, candidate) is not None
    text = httpx.get(f"{web.url}/metrics").text
    assert _metric(text, "dicom_node_instances") == 0
    assert _metric(text, "dicom_node_instances_received_total") == 3.0
    assert _metric(text, "dicom_node_received_bytes_total") == received


class _FormFields(HTMLParser):
    """What a browser submits for the form of a given id: text inputs, checked checkboxes, the selected option."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id, self.inside, self.select = form_id, False, ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        elif self.inside and tag == "input" and a.get("name"):
            if a.get("type") != "checkbox" or "checked" in a:
                self.fields[a["name"]] = a.get("value", "")
        elif self.inside and tag == "select":
            self.select = a.get("name", "")
        elif self.inside and tag == "option" and self.select and "selected" in a:
            self.fields[self.select] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self.select = ""


def test_editing_a_tls_destination_in_the_browser_keeps_all_its_settings(web: WebNode, tmp_path: Path) -> None:
    from tests.tls_certs import make_pki

    pki = make_pki(tmp_path)
    client, csrf = web.login("ada")
    body = {"ae_title": "TPS", "host": "localhost", "port": 2762, "timeout_seconds": 12.0, "max_age_hours": 5.0,
            "accepts_labelmap_seg": True, "seg_transfer_syntaxes": ["JPEGLSLossless", "DeflatedExplicitVRLittleEndian"],
            "tls": {"enabled": True, "ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                    "key_file": str(pki.client_key), "min_version": "1.3", "check_hostname": False}}
    assert client.put("/api/destinations/secure", json=body, headers={"X-CSRF-Token": csrf}).json()["ok"]
    before = LiveConfig(web.settings, web.factory).current().destinations["secure"]
    assert before.tls.enabled and before.tls.ca_file == pki.ca

    page = client.get("/destinations", params={"edit": "secure"})
    parser = _FormFields("destination-form")
    parser.feed(page.text)
    form = parser.fields
    assert form["original_name"] == "secure" and form["tls_enabled"] == "1" and "tls_check_hostname" not in form
    assert (form["tls_ca_file"], form["tls_min_version"]) == (str(pki.ca), "1.3")
    assert form["seg_transfer_syntaxes"] == "JPEGLSLossless, DeflatedExplicitVRLittleEndian"
    form["timeout_seconds"] = "20"  # the one change the admin makes
    assert client.post("/destinations", data=form).status_code == 303

    after = LiveConfig(web.settings, web.factory).current().destinations["secure"]
    assert after.timeout_seconds == 20.0
    assert {**dataclasses.asdict(after), "timeout_seconds": 12.0} == dataclasses.asdict(before)
    page = client.get("/destinations").text
    assert "JPEGLSLossless, DeflatedExplicitVRLittleEndian, uncompressed" in page

    # a TLS problem is shown on the TLS fields, and the form keeps what was typed
    form["tls_ca_file"] = str(tmp_path / "missing.pem")
    bad = client.post("/destinations", data=form)
    assert bad.status_code == 400 and 'data-field="tls"' in bad.text and "missing.pem" in bad.text
    assert LiveConfig(web.settings, web.factory).current().destinations["secure"] == after
    assert client.delete("/api/destinations/secure", headers={"X-CSRF-Token": csrf}).json()["ok"]


def test_a_bad_form_field_gets_a_page_that_says_why_not_json(web: WebNode) -> None:
    client, csrf = web.login("ada")
    bad_name = client.post("/users", data={"csrf_token": csrf, "name": "rita smith", "role": "viewer",
                                           "password": PASSWORD})
    assert bad_name.status_code == 400 and "text/html" in bad_name.headers["content-type"]
    assert "no spaces" in bad_name.text and "rita smith" not in [u["name"] for u in client.get("/api/users").json()]
    bad_role = client.post("/users", data={"csrf_token": csrf, "name": "rita", "role": "root", "password": PASSWORD})
    assert bad_role.status_code == 400 and "the role must be one of admin" in bad_role.text
    # any other form whose field the schema refuses: a page naming the field, with a way back
    bad_verb = client.post("/users/rita/explode", data={"csrf_token": csrf},
                           headers={"Accept": "text/html", "Referer": f"{web.url}/users"})
    assert bad_verb.status_code == 422 and "text/html" in bad_verb.headers["content-type"]
    assert 'id="problems"' in bad_verb.text and "verb" in bad_verb.text and 'href="/users"' in bad_verb.text
    # the API keeps its JSON 422
    api = client.post("/api/users", json={"name": "x y", "role": "viewer", "password": PASSWORD},
                      headers={"X-CSRF-Token": csrf})
    assert api.status_code == 422 and api.json()["detail"][0]["loc"][-1] == "name"
