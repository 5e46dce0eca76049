"""Who is asking: a browser session (cookie) or an API token (``Authorization: Bearer``), and what their role allows.

Every route but ``/healthz`` (and ``/metrics``, with its own token) depends on :func:`principal`.
Writes depend on :func:`writer` as well: a session must send its CSRF token (form field
``csrf_token`` or header ``X-CSRF-Token``); a bearer token needs none, as no browser sends it by itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response

from dicom_node.db import users
from dicom_node.db.admin_tables import Role
from dicom_node.db.tables import utcnow
from dicom_node.web.credentials import new_token, token_digest
from dicom_node.web.state import node_state

SESSION_COOKIE = "dicom_node_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
READ_ROLES = frozenset(Role)
OPERATOR_ROLES = frozenset({Role.ADMIN, Role.PHYSICIST})  # retry and cancel jobs, read PHI
ADMIN_ROLES = frozenset({Role.ADMIN})


@dataclass(frozen=True)
class Principal:
    user_id: int
    name: str
    role: Role
    csrf_token: str | None  # None when authenticated by an API token

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


class LoginRequired(Exception):  # control flow to the login page, not an error
    """No valid session or token: pages redirect to /login, the API answers 401."""


def start_session(request: Request, response: Response, user_id: int) -> None:
    state = node_state(request)
    token = new_token()
    lifetime = timedelta(minutes=state.settings.web.session_minutes)
    with state.factory.begin() as session:
        users.add_session(session, user_id, token_digest(token), new_token(), utcnow() + lifetime)
    response.set_cookie(SESSION_COOKIE, token, max_age=int(lifetime.total_seconds()), httponly=True,
                        samesite="strict", secure=state.settings.web.secure_cookies, path="/")


def end_session(request: Request, response: Response) -> None:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        with node_state(request).factory.begin() as session:
            users.end_session(session, token_digest(token))
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


def _authenticate(request: Request) -> Principal | None:
    factory = node_state(request).factory
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        with factory.begin() as session:
            user = users.token_user(session, token_digest(header[7:].strip()))
            return None if user is None else Principal(user.id, user.name, user.role, None)
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    with factory() as session:
        found = users.session_user(session, token_digest(token))
    if found is None:
        return None
    user, csrf = found
    return Principal(user.id, user.name, user.role, csrf)


def principal(request: Request) -> Principal:
    who = _authenticate(request)
    if who is None:
        raise LoginRequired()
    request.state.principal = who
    return who


def role_in(roles: frozenset[Role]) -> Callable[[Principal], Principal]:
    def check(who: Principal = Depends(principal)) -> Principal:
        if who.role not in roles:
            raise HTTPException(status_code=403, detail=f"role {who.role.value} may not do this")
        return who
    return check


def writer(roles: frozenset[Role]) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A write: the role must allow it, and a session must prove its CSRF token."""
    allowed = role_in(roles)

    async def check(request: Request, who: Principal = Depends(principal)) -> Principal:
        allowed(who)
        if who.csrf_token is not None:
            sent = request.headers.get(CSRF_HEADER, "")
            if not sent and request.headers.get("content-type", "").startswith(
                    ("application/x-www-form-urlencoded", "multipart/form-data")):
                sent = str((await request.form()).get(CSRF_FIELD, ""))
            if not hmac.compare_digest(sent.encode(), who.csrf_token.encode()):
                raise HTTPException(status_code=403, detail="missing or wrong CSRF token")
        return who
    return check


def client_address(request: Request) -> str:
    return request.client.host if request.client else "-"


# what a route's signature names: ``who: Reader`` reads, ``who: AdminWrite`` changes the config
Reader = Annotated[Principal, Depends(role_in(READ_ROLES))]
Operator = Annotated[Principal, Depends(role_in(OPERATOR_ROLES))]
Admin = Annotated[Principal, Depends(role_in(ADMIN_ROLES))]
ReaderPost = Annotated[Principal, Depends(writer(READ_ROLES))]
OperatorWrite = Annotated[Principal, Depends(writer(OPERATOR_ROLES))]
AdminWrite = Annotated[Principal, Depends(writer(ADMIN_ROLES))]
Authenticated = Annotated[Principal, Depends(principal)]
