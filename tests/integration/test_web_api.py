"""The web admin's API over real HTTP (uvicorn on a free port, httpx), on an index filled by a real association.

Auth on every route but /healthz, session cookie flags, CSRF, the login rate limit, API tokens, roles
and PHI masking, job retry and cancel, live config edits with per-field errors, audit entries with
diffs, the dry run, /metrics behind its token, and the CLI's users and config commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from dicom_node.db import audit
from dicom_node.db.admin_tables import Role
from dicom_node.db.engine import open_index
from dicom_node.db.tables import Job
from dicom_node.live_config import LiveConfig
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.scheduler import sweep
from tests.conftest import REPO, make_settings, settings_dict
from tests.conftest import SHARED_DATA as SHARED
from tests.peers import store_series
from tests.web_server import WebNode, serve_web

RULES = {"rules": [{"name": "ct", "model": "builtin", "destinations": ["pacs"], "match": {"Modality": "CT"}},
                   {"name": "mr", "model": "builtin", "destinations": ["pacs"], "match": {"Modality": "MR"}}]}
DESTINATIONS = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}]
WEB = {"login_failures_allowed": 3, "metrics_token": "scrape-me"}


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[WebNode]:
    tmp = tmp_path_factory.mktemp("web")
    settings = make_settings(tmp, routing=RULES, destinations=DESTINATIONS, web=WEB,
                             completion={"quiet_seconds": 1.0, "settle_seconds": 0.1, "sweep_interval_seconds": 0.2})
    factory = open_index(settings.node.database_url)
    server = start_listener(settings.node, ReceiverContext(factory=factory, store=InstanceStore(
        settings.node.storage_dir, 1)))
    try:
        store_series(settings.node.port, sorted((shared_data / "ct" / "dcmqi_liver_3slice" / "ct").glob("*.dcm")))
        deadline = time.monotonic() + 15
        while not sweep(LiveConfig(settings, factory).current(), factory):
            assert time.monotonic() < deadline, "the series was not dispatched"
            time.sleep(0.2)
        with serve_web(settings, factory) as node:
            for name, role in (("ada", Role.ADMIN), ("phil", Role.PHYSICIST), ("vic", Role.VIEWER)):
                node.add_user(name, role)
            yield node
    finally:
        server.shutdown()


def _job_id(web: WebNode) -> int:
    with web.factory() as session:
        return int(session.scalars(select(Job.id)).first() or 0)


def test_every_route_but_healthz_needs_a_login(web: WebNode) -> None:
    anonymous = httpx.Client(base_url=web.url, timeout=30)
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    for path in ("/api/dashboard", "/api/series", "/api/jobs", "/api/deliveries", "/api/audit", "/api/users",
                 "/api/destinations", "/api/rules", "/openapi.json"):
        assert anonymous.get(path).status_code == 401, path
    for path in ("/", "/series", "/jobs", "/deliveries", "/audit", "/users", "/destinations", "/rules"):
        reply = anonymous.get(path)
        assert (reply.status_code, reply.headers["location"]) == (303, "/login"), path
    assert anonymous.post(f"/api/jobs/{_job_id(web)}/cancel").status_code == 401
    assert anonymous.get("/api/jobs", headers={"Authorization": "Bearer not-a-token"}).status_code == 401


def test_the_session_cookie_is_httponly_and_samesite_strict(web: WebNode) -> None:
    client = httpx.Client(base_url=web.url, timeout=30)
    form = client.get("/login").text
    token = form.split('name="csrf_token" value="')[1].split('"')[0]
    reply = client.post("/login", data={"username": "phil", "password": "correct horse battery", "csrf_token": token})
    cookie = next(v for k, v in reply.headers.multi_items() if k == "set-cookie" and "dicom_node_session=" in v)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert client.get("/api/jobs").status_code == 200
    # a login form without its token (a cross-site post) is refused
    assert httpx.post(f"{web.url}/login", data={"username": "phil", "password": "correct horse battery"}).status_code \
        == 403


def test_failed_logins_are_audited_and_limited_per_user(web: WebNode) -> None:
    client = httpx.Client(base_url=web.url, timeout=30)
    codes = []
    for _ in range(4):
        token = client.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
        codes.append(client.post("/login", data={"username": "nobody", "password": "guess",
                                                 "csrf_token": token}).status_code)
    assert codes == [401, 401, 401, 429]
    with web.factory() as session:
        actions = [e.action for e in audit.recent(session) if e.target == "nobody"]
        assert all("guess" not in json.dumps(e.details) for e in audit.recent(session))
    assert actions.count("login-failed") == 3 and "login-blocked" in actions
    # the address is blocked too, for every user name: the other tests log in from it
    token = client.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    assert client.post("/login", data={"username": "ada", "password": "correct horse battery",
                                       "csrf_token": token}).status_code == 429
    web.app.state.node.limiter.clear()


def test_writes_need_the_csrf_token_of_the_session(web: WebNode) -> None:
    client, csrf = web.login("phil")
    job = _job_id(web)
    assert client.post(f"/api/jobs/{job}/cancel").status_code == 403
    assert client.post(f"/api/jobs/{job}/cancel", headers={"X-CSRF-Token": "wrong"}).status_code == 403
    done = client.post(f"/api/jobs/{job}/cancel", headers={"X-CSRF-Token": csrf})
    assert done.json() == {"ok": True, "message": "cancelled"}
    assert client.get(f"/api/jobs/{job}").json()["job"]["error"] == "Cancelled: cancelled by phil"
    assert client.post(f"/api/jobs/{job}/cancel", headers={"X-CSRF-Token": csrf}).status_code == 409
    retried = client.post(f"/api/jobs/{job}/retry", headers={"X-CSRF-Token": csrf})
    assert retried.json()["message"] == "queued again"
    assert client.get(f"/api/jobs/{job}").json()["job"]["status"] == "queued"
    with web.factory() as session:
        entries = [(e.actor, e.action, e.target) for e in audit.recent(session) if e.action in ("retry", "cancel")]
    assert ("phil", "cancel", f"job {job}") in entries and ("phil", "retry", f"job {job}") in entries


def test_an_api_token_works_without_csrf_until_its_user_is_disabled(web: WebNode) -> None:
    web.add_user("script", Role.PHYSICIST)
    token = web.token_for("script")
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{web.url}/api/dashboard", headers=headers).json()["queue_depth"] >= 0
    assert httpx.post(f"{web.url}/api/jobs/{_job_id(web)}/cancel", headers=headers).status_code in (200, 409)
    with web.factory.begin() as session:
        from dicom_node.db import users

        users.set_disabled(session, "script", True)
    assert httpx.get(f"{web.url}/api/dashboard", headers=headers).status_code == 401


def test_a_viewer_never_sees_phi_and_cannot_write(web: WebNode) -> None:
    client, csrf = web.login("vic")
    rows = client.get("/api/series").json()
    assert rows and all(r["patient_id"] == "***" for r in rows)
    detail = client.get(f"/api/series/{rows[0]['id']}").json()
    assert detail["header"]["PatientName"] == "***" and detail["header"]["AccessionNumber"] == "***"
    page = client.get(f"/series/{rows[0]['id']}").text + client.get("/series").text
    assert "JANCT000" not in page and "99000" not in page and "03086212" not in page
    assert client.get("/api/series", params={"patient_id": "99000"}).status_code == 403
    assert client.post(f"/api/jobs/{_job_id(web)}/retry", headers={"X-CSRF-Token": csrf}).status_code == 403
    assert client.put("/api/destinations/x", json={"ae_title": "X", "host": "h", "port": 1},
                      headers={"X-CSRF-Token": csrf}).status_code == 403
    assert client.get("/api/audit").status_code == 403 and client.get("/api/users").status_code == 403
    # a physicist sees them, and finds the series by patient ID
    phil, _ = web.login("phil")
    found = phil.get("/api/series", params={"patient_id": "99000"}).json()
    assert [r["patient_id"] for r in found] == ["99000"]
    assert phil.get(f"/api/series/{found[0]['id']}").json()["header"]["PatientName"] == "JANCT000"
    assert phil.put("/api/rules/x", json={}, headers={"X-CSRF-Token": "x"}).status_code == 403


def test_config_edits_are_validated_per_field_audited_and_picked_up_live(web: WebNode) -> None:
    client, csrf = web.login("ada")
    live = LiveConfig(web.settings, web.factory)
    assert set(live.current().destinations) == {"pacs"}
    bad = client.put("/api/destinations/tps", json={"ae_title": "TPS", "host": "10.0.0.9", "port": "eleven"},
                     headers={"X-CSRF-Token": csrf}).json()
    assert bad["ok"] is False and [p["field"] for p in bad["problems"]] == ["port"]
    good = client.put("/api/destinations/tps", json={"ae_title": "TPS", "host": "10.0.0.9", "port": 104},
                      headers={"X-CSRF-Token": csrf}).json()
    assert good["ok"] is True
    assert set(live.current().destinations) == {"pacs", "tps"}  # the sweep's next look sees it
    unknown = client.put("/api/rules/lung", json={"model": "builtin", "destinations": ["nowhere"]},
                         headers={"X-CSRF-Token": csrf}).json()
    assert unknown["ok"] is False and unknown["problems"][0]["field"] == "destinations"
    assert "nowhere" in unknown["problems"][0]["message"]
    referenced = client.delete("/api/destinations/pacs", headers={"X-CSRF-Token": csrf}).json()
    assert referenced["ok"] is False  # rules still send there
    with web.factory() as session:
        change = next(e for e in audit.recent(session) if e.action == "config-change")
    assert (change.actor, change.target, change.details["change"]) == ("ada", "destination tps", "added")
    assert change.details["diff"]["port"] == [None, 104]


def test_the_dry_run_says_which_rule_matches_and_why_the_others_do_not(web: WebNode) -> None:
    client, _ = web.login("vic")
    series_id = client.get("/api/series").json()[0]["id"]
    result = client.get(f"/api/rules/dry-run/{series_id}").json()
    verdicts = {v["rule"]: v for v in result["verdicts"]}
    assert verdicts["ct"]["applies"] and not verdicts["mr"]["applies"]
    assert verdicts["mr"]["reasons"] == ["Modality 'CT' does not fit 'MR'"]
    assert [a["rule_name"] for a in result["jobs"]] == ["ct"]
    # the same from an uploaded file, on the page
    client, csrf = web.login("ada")
    upload = (SHARED / "ct" / "dcmqi_liver_3slice" / "ct" / "01.dcm").read_bytes()
    page = client.post("/dry-run", data={"csrf_token": csrf}, files={"file": ("01.dcm", upload, "application/dicom")})
    assert page.status_code == 200 and "uploaded file 01.dcm" in page.text
    assert "Modality &#39;CT&#39; does not fit &#39;MR&#39;" in page.text
    assert client.post("/dry-run", data={"csrf_token": csrf},
                       files={"file": ("x.dcm", b"not dicom", "application/dicom")}).status_code == 400


def test_metrics_need_their_token_and_read_the_index(web: WebNode) -> None:
    assert httpx.get(f"{web.url}/metrics").status_code == 401
    text = httpx.get(f"{web.url}/metrics", headers={"Authorization": "Bearer scrape-me"}).text
    assert "dicom_node_instances 3.0" in text
    assert 'dicom_node_jobs{state="queued"}' in text and "dicom_node_queue_depth" in text
    assert 'dicom_node_series_completed{reason=' in text and "dicom_node_free_disk_bytes" in text


def test_users_and_config_commands(tmp_path: Path) -> None:
    data = settings_dict(tmp_path, destinations=DESTINATIONS, routing=RULES)
    config = tmp_path / "node.toml"
    config.write_text(_toml(data))
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dicom_node.cli", *args, "--config", str(config)], input=stdin,
                              capture_output=True, text=True, env=env, timeout=120)

    assert cli("users", "add", "root", "--role", "admin", stdin="short\n").returncode == 2
    assert cli("users", "add", "root", "--role", "admin", stdin="long enough secret\n").returncode == 0
    assert cli("users", "add", "root", stdin="long enough secret\n").returncode == 2  # exists
    token = cli("users", "token", "root").stdout.strip()
    assert len(token) >= 40
    assert cli("users", "disable", "root").returncode == 0
    assert "root                     admin      disabled" in cli("users", "list").stdout
    exported = json.loads(cli("config", "export").stdout)
    assert [d["name"] for d in exported["destinations"]] == ["pacs"] and exported["version"] == 1
    exported["destinations"].append({**DESTINATIONS[0], "name": "tps", "port": 105})
    assert exported["rules"][0]["review"] == "none"
    exported["rules"][0].update(review="required", reviewers=["root", "physics@hospital.example.org"])
    (tmp_path / "live.json").write_text(json.dumps(exported))
    assert "version 2" in cli("config", "import", str(tmp_path / "live.json")).stdout
    again = json.loads(cli("config", "export").stdout)
    assert {k: again[k] for k in ("destinations", "rules", "templates")} == \
        {k: exported[k] for k in ("destinations", "rules", "templates")}
    exported["rules"][0]["destinations"] = ["nowhere"]
    (tmp_path / "bad.json").write_text(json.dumps(exported))
    refused = cli("config", "import", str(tmp_path / "bad.json"))
    assert refused.returncode == 2 and "routing.rules[0].destinations[0]" in refused.stderr


def _toml(data: dict[str, object]) -> str:
    """The few shapes settings_dict makes, as TOML."""
    lines: list[str] = []
    for section in ("node", "completion", "worker", "identity"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in data[section].items()]  # type: ignore[attr-defined]
    for dest in data["destinations"]:  # type: ignore[attr-defined]
        lines.append("[[destinations]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in dest.items()]
    for rule in data["routing"]["rules"]:  # type: ignore[index]
        lines.append("[[routing.rules]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in rule.items() if k != "match"]
        lines.append("match = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in rule["match"].items()) + " }")
    return "\n".join(lines) + "\n"
