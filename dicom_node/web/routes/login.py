"""Login and logout; failed and blocked logins are audited with the client address, never the password."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse

from dicom_node.db import audit, users
from dicom_node.web.auth import client_address, end_session, start_session
from dicom_node.web.credentials import new_token, password_matches
from dicom_node.web.state import node_state, render

router = APIRouter(include_in_schema=False)
LOGIN_CSRF_COOKIE = "dicom_node_login"  # double-submit token of the login form (there is no session yet)


def _login_page(request: Request, error: str = "", status_code: int = 200) -> Any:
    token = new_token()
    response = render(request, "login.html", {"login_token": token, "error": error}, status_code)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=node_state(request).settings.web.secure_cookies, path="/login")
    return response


@router.get("/login")
def login_form(request: Request) -> Any:
    return _login_page(request)


@router.post("/login")
def login(request: Request, username: str = Form(""), password: str = Form(""), csrf_token: str = Form("")) -> Any:
    state = node_state(request)
    address = client_address(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), csrf_token.encode()):
        return _login_page(request, "The login form expired; please try again.", 403)
    if state.limiter.blocked(username, address):
        with state.factory.begin() as session:
            audit.record(session, username or "-", "login-blocked", username, {"address": address})
        return _login_page(request, "Too many failed logins; wait a few minutes.", 429)
    with state.factory.begin() as session:
        user = users.user_named(session, username)
        ok = password_matches(user.password_hash if user else None, password) and user is not None \
            and not user.disabled
        audit.record(session, username or "-", "login" if ok else "login-failed", username, {"address": address})
    if not ok or user is None:
        state.limiter.failed(username, address)
        return _login_page(request, "Wrong user name or password.", 401)
    state.limiter.succeeded(username)
    response = RedirectResponse("/", status_code=303)
    start_session(request, response, user.id)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request) -> Any:
    # SameSite=Strict keeps other sites from sending the cookie, so logging out needs no token
    response = RedirectResponse("/login", status_code=303)
    end_session(request, response)
    return response
