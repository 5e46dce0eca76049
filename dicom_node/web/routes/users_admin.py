"""Users (admins only): the list with each user's API tokens; add, role, disable/enable, password reset,
token create and revoke. Every change is audited (``dicom_node.web.user_admin``)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Form, HTTPException, Path, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from dicom_node.db import users
from dicom_node.db.admin_tables import Role
from dicom_node.db.users import UserError
from dicom_node.web import user_admin
from dicom_node.web.auth import Admin, AdminWrite
from dicom_node.web.schemas import ActionOut
from dicom_node.web.state import node_state, render

router = APIRouter()
USER_NAME = r"^[A-Za-z0-9._@-]{1,64}$"
NAME = Path(pattern=USER_NAME)
MAX_ID = 2**31 - 1


class TokenOut(BaseModel):
    id: int
    created_at: datetime
    last_used_at: datetime | None


class UserDetailOut(BaseModel):
    name: str
    role: str
    disabled: bool
    created_at: datetime
    tokens: list[TokenOut]


class UserIn(BaseModel):
    name: str = Field(pattern=USER_NAME)
    role: Role
    password: str = Field(min_length=1, max_length=1024)


class UserChangeIn(BaseModel):
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=1, max_length=1024)


class NewTokenOut(BaseModel):
    id: int
    token: str  # shown once; only its digest is stored


def user_details(request: Request) -> list[UserDetailOut]:
    with node_state(request).factory() as session:
        return [UserDetailOut(name=u.name, role=u.role.value, disabled=u.disabled, created_at=u.created_at,
                              tokens=[TokenOut(id=t.id, created_at=t.created_at, last_used_at=t.last_used_at)
                                      for t in users.tokens_of(session, u.name)])
                for u in users.list_users(session)]


def _refused(exc: UserError) -> HTTPException:
    return HTTPException(status_code=404 if str(exc).startswith("no user") else 409, detail=str(exc))


@router.get("/api/users", response_model=list[UserDetailOut], tags=["users"])
def api_users(request: Request, _who: Admin) -> list[UserDetailOut]:
    return user_details(request)


@router.post("/api/users", response_model=ActionOut, tags=["users"],
             responses={409: {"description": "the user exists, or the password is too short"}})
def api_add_user(request: Request, who: AdminWrite, body: UserIn = Body(...)) -> ActionOut:
    try:
        user_admin.add(node_state(request).factory, who.name, body.name, body.role, body.password)
    except UserError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    return ActionOut(ok=True, message=f"user {body.name} added ({body.role.value})")


@router.patch("/api/users/{name}", response_model=ActionOut, tags=["users"],
              responses={404: {"description": "no such user"},
                         409: {"description": "the last admin, or the password is too short"}})
def api_change_user(request: Request, who: AdminWrite, name: str = NAME,
                    body: UserChangeIn = Body(...)) -> ActionOut:
    try:
        done = user_admin.change(node_state(request).factory, who.name, name,
                                 user_admin.Change(body.role, body.disabled, body.password))
    except UserError as exc:
        raise _refused(exc) from exc
    return ActionOut(ok=True, message=", ".join(done) or "unchanged")


@router.post("/api/users/{name}/tokens", response_model=NewTokenOut, tags=["users"],
             responses={404: {"description": "no such user"}})
def api_new_token(request: Request, who: AdminWrite, name: str = NAME) -> NewTokenOut:
    try:
        token_id, token = user_admin.create_token(node_state(request).factory, who.name, name)
    except UserError as exc:
        raise _refused(exc) from exc
    return NewTokenOut(id=token_id, token=token)


@router.delete("/api/users/{name}/tokens/{token_id}", response_model=ActionOut, tags=["users"],
               responses={404: {"description": "no such user"}, 409: {"description": "no such token"}})
def api_revoke_token(request: Request, who: AdminWrite, name: str = NAME,
                     token_id: int = Path(ge=1, le=MAX_ID)) -> ActionOut:
    try:
        user_admin.revoke_token(node_state(request).factory, who.name, name, token_id)
    except UserError as exc:
        raise _refused(exc) from exc
    return ActionOut(ok=True, message=f"token {token_id} of {name} revoked")


def _page(request: Request, message: str = "", error: str = "", token: str = "") -> Any:
    return render(request, "users.html", {"rows": user_details(request), "roles": [r.value for r in Role],
                                          "message": message, "error": error, "new_token": token},
                  status_code=400 if error else 200)


@router.get("/users", include_in_schema=False)
def users_page(request: Request, _who: Admin) -> Any:
    return _page(request)


@router.post("/users", include_in_schema=False)
def add_user_form(request: Request, who: AdminWrite, name: str = Form(""), role: str = Form(""),
                  password: str = Form("")) -> Any:
    # checked here, not by the form's schema: a bad field shows the page with the reason, not a JSON 422
    if not re.fullmatch(USER_NAME[1:-1], name):
        return _page(request, error="a user name is 1 to 64 letters, digits or . _ @ - (no spaces)")
    if role not in {r.value for r in Role}:
        return _page(request, error=f"the role must be one of {', '.join(r.value for r in Role)}")
    if len(password) > 1024:
        return _page(request, error="the password is longer than 1024 characters")
    try:
        user_admin.add(node_state(request).factory, who.name, name, Role(role), password)
    except UserError as exc:
        return _page(request, error=str(exc))
    return _page(request, message=f"user {name} added ({role})")


@router.post("/users/{name}/{verb}", include_in_schema=False)
async def change_user_form(request: Request, who: AdminWrite, name: str = NAME,
                           verb: str = Path(pattern="^(role|disable|enable|password|token|revoke)$")) -> Any:
    form = await request.form()
    factory = node_state(request).factory
    try:
        if verb == "token":
            _, token = user_admin.create_token(factory, who.name, name)
            return _page(request, message=f"new API token of {name} (shown once):", token=token)
        if verb == "revoke":
            token_id = str(form.get("token_id", ""))
            if not token_id.isdigit():
                raise HTTPException(status_code=400, detail="token_id missing")
            user_admin.revoke_token(factory, who.name, name, int(token_id))
        else:
            role = str(form.get("role", ""))
            what = user_admin.Change(
                role=Role(role) if verb == "role" and role in {r.value for r in Role} else None,
                disabled={"disable": True, "enable": False}.get(verb),
                password=str(form.get("password", "")) if verb == "password" else None)
            user_admin.change(factory, who.name, name, what)
    except UserError as exc:
        return _page(request, error=str(exc))
    return RedirectResponse("/users", status_code=303)
