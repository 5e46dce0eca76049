"""The notification settings in the web admin over real HTTP: shown read-only on the rules page (never a
secret), and a rule's ``notify`` edited there, checked against the configured webhooks like the TOML."""

from __future__ import annotations

from pathlib import Path

from dicom_node.db.admin_tables import Role
from dicom_node.db.engine import open_index
from tests.conftest import make_settings
from tests.web_server import serve_web

SECRET = "never-on-a-page-5a1f"


def test_notifications_are_shown_and_a_rules_recipients_are_edited_and_checked(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, notifications={"webhooks": [{"name": "ops", "url": "https://ops.hospital.org/hook?key=k1",
                                               "secret": SECRET}],
                                 "email": {"host": "smtp.hospital.org", "from_address": "node@hospital.org"},
                                 "defaults": ["ops"]},
        routing={"rules": [{"name": "ct", "model": "builtin", "destinations": [], "notify": ["ops"]}]})
    factory = open_index(settings.node.database_url)
    with serve_web(settings, factory) as web:
        web.add_user("ada", Role.ADMIN)
        client, csrf = web.login("ada")
        page = client.get("/rules").text
        assert 'id="notifications"' in page and "ops → https://ops.hospital.org/hook" in page
        assert "via smtp.hospital.org:587 (starttls) from node@hospital.org" in page
        assert SECRET not in page and "key=k1" not in page
        form = {"csrf_token": csrf, "name": "ct", "original_name": "ct", "model": "builtin", "destinations": "",
                "outputs": "SEG", "notify": "ops, mailto:physics@hospital.org"}
        assert client.post("/rules", data=form).status_code == 303
        (rule,) = client.get("/api/rules").json()
        assert rule["notify"] == ["ops", "mailto:physics@hospital.org"]
        refused = client.post("/rules", data={**form, "notify": "pager"})
        assert refused.status_code == 400
        assert "&#39;pager&#39; is not a configured webhook (known: ops) nor mailto:ADDRESS" in refused.text
        assert client.get("/api/rules").json()[0]["notify"] == ["ops", "mailto:physics@hospital.org"]
