"""A real web admin for tests: the app on uvicorn on a free port in a thread, users made with the CLI's code."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import users
from dicom_node.db.admin_tables import Role
from dicom_node.settings import Settings
from dicom_node.web.app import create_app
from dicom_node.web.credentials import hash_password, new_token, token_digest
from tests.conftest import free_port

PASSWORD = "correct horse battery"


@dataclass
class WebNode:
    url: str
    factory: sessionmaker[Session]
    settings: Settings
    app: FastAPI

    def add_user(self, name: str, role: Role, password: str = PASSWORD) -> None:
        with self.factory.begin() as session:
            users.add_user(session, name, hash_password(password), role)

    def token_for(self, name: str) -> str:
        token = new_token()
        with self.factory.begin() as session:
            users.add_token(session, users.existing_user(session, name).id, token_digest(token))
        return token

    def login(self, name: str, password: str = PASSWORD) -> tuple[httpx.Client, str]:
        """A client holding a session of ``name``, and the session's CSRF token (read from a page's form)."""
        client = httpx.Client(base_url=self.url, timeout=30)
        form = client.get("/login")
        login_token = _csrf(form.text)
        reply = client.post("/login", data={"username": name, "password": password, "csrf_token": login_token})
        assert reply.status_code == 303, reply.text[-500:]
        match = re.search(r'<meta name="csrf-token" content="([^"]+)">', client.get("/").text)
        assert match is not None
        return client, match.group(1)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, html[-500:]
    return match.group(1)


@contextmanager
def serve_web(settings: Settings, factory: sessionmaker[Session], **config: Any) -> Iterator[WebNode]:
    port = free_port()
    app = create_app(settings, factory)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_config=None, access_log=False, lifespan="off", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn exited at start"
        time.sleep(0.05)
    try:
        yield WebNode(f"http://127.0.0.1:{port}", factory, settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
