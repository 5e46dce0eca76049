"""schemathesis against the web admin's OpenAPI schema, over real HTTP: no 5xx, every answer as the schema says.

A bounded number of generated requests per operation (``EXAMPLES``), as an admin with an API token, on
an index with a stored series, a queued job and a destination. The destination *Test* (a C-ECHO to
whatever host a generated request names) is left out: it is a network call, tested in test_web_api.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dicom_node.db.admin_tables import Role
from dicom_node.db.engine import open_index
from dicom_node.live_config import LiveConfig
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.scheduler import sweep
from tests.conftest import make_settings
from tests.peers import store_series
from tests.web_server import WebNode, serve_web

EXAMPLES = 12
RULES = {"rules": [{"name": "ct", "model": "builtin", "destinations": ["pacs"], "match": {"Modality": "CT"}}]}
DESTINATIONS = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[WebNode]:
    tmp = tmp_path_factory.mktemp("schema")
    node_settings = make_settings(tmp, routing=RULES, destinations=DESTINATIONS,
                                  completion={"quiet_seconds": 1.0, "settle_seconds": 0.1})
    factory = open_index(node_settings.node.database_url)
    server = start_listener(node_settings.node, ReceiverContext(factory=factory, store=InstanceStore(
        node_settings.node.storage_dir, 1)))
    try:
        store_series(node_settings.node.port, sorted((shared_data / "ct" / "dcmqi_liver_3slice" / "ct").glob("*.dcm")))
        live = LiveConfig(node_settings, factory)
        for _ in range(50):
            if sweep(live.current(), factory):
                break
            __import__("time").sleep(0.2)
        with serve_web(node_settings, factory) as node:
            node.add_user("ada", Role.ADMIN)
            yield node
    finally:
        server.shutdown()


def test_the_api_keeps_to_its_openapi_schema(web: WebNode) -> None:
    headers = {"Authorization": f"Bearer {web.token_for('ada')}"}
    schema = schemathesis.openapi.from_dict(web.app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    tested = [op for op in operations if not op.path.endswith("/echo")]
    assert len(tested) >= 12, [op.path for op in operations]
    failures: list[str] = []
    for operation in tested:
        @given(case=operation.as_strategy(), _=st.none())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case, _: None) -> None:
            case.call_and_validate(base_url=web.url, headers=headers)

        try:
            check()
        except Exception as exc:  # every operation is run; the failures are reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:1500])
    assert failures == [], "\n\n".join(failures)
