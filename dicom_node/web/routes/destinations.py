"""Destinations of the live config: list, create, edit, delete, and the *Test* button (a C-ECHO)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request
from fastapi.responses import RedirectResponse

from dicom_node.errors import SendError
from dicom_node.send.cstore import echo
from dicom_node.web import config_edit
from dicom_node.web.auth import AdminWrite, Principal, Reader
from dicom_node.web.forms import destination_form, destination_table, merged_destination
from dicom_node.web.schemas import ConfigWriteOut, EchoOut, ProblemOut
from dicom_node.web.state import node_state, render

router = APIRouter()
NAME = Path(min_length=1, max_length=64)


def written(result: config_edit.EditResult) -> ConfigWriteOut:
    return ConfigWriteOut(ok=result.ok, version=result.version,
                          problems=[ProblemOut(**p.__dict__) for p in result.problems])


def test_destination(request: Request, who: Principal, name: str) -> EchoOut:
    settings = node_state(request).live.current()
    dest = settings.destinations.get(name)
    if dest is None:
        raise HTTPException(status_code=404, detail=f"no destination {name!r}")
    try:
        status = echo(dest, settings.node.ae_title)
        out = EchoOut(ok=status == 0, status=status, message=f"C-ECHO {dest.ae_title}@{dest.host}:{dest.port}: "
                                                            f"status 0x{status:04X}")
    except SendError as exc:
        out = EchoOut(ok=False, status=None, message=str(exc))
    return out


@router.get("/api/destinations", response_model=list[dict[str, Any]], tags=["config"])
def api_destinations(request: Request, _who: Reader) -> list[dict[str, Any]]:
    return config_edit.tables(node_state(request))["destination"]


@router.put("/api/destinations/{name}", response_model=ConfigWriteOut, tags=["config"])
def api_put_destination(request: Request, who: AdminWrite, name: str = NAME,
                        body: dict[str, Any] = Body(...)) -> ConfigWriteOut:
    return written(config_edit.put(node_state(request), who.name, "destination", name, {"name": name, **body}))


@router.delete("/api/destinations/{name}", response_model=ConfigWriteOut, tags=["config"],
               responses={404: {"description": "no such destination"}})
def api_delete_destination(request: Request, who: AdminWrite, name: str = NAME) -> ConfigWriteOut:
    result = config_edit.delete(node_state(request), who.name, "destination", name)
    if result is None:
        raise HTTPException(status_code=404, detail=f"no destination {name!r}")
    return written(result)


@router.post("/api/destinations/{name}/echo", response_model=EchoOut, tags=["config"],
             responses={404: {"description": "no such destination"}})
def api_echo(request: Request, who: AdminWrite, name: str = NAME) -> EchoOut:
    return test_destination(request, who, name)


def _page(request: Request, **context: Any) -> Any:
    state = node_state(request)
    return render(request, "destinations.html", {"rows": config_edit.tables(state)["destination"],
                                                 "errors": {}, "form": {}, "echo": None, **context},
                  status_code=400 if context.get("errors") else 200)


def _stored(request: Request, name: str) -> dict[str, Any] | None:
    return next((d for d in config_edit.tables(node_state(request))["destination"] if d.get("name") == name), None)


@router.get("/destinations", include_in_schema=False)
def destinations_page(request: Request, _who: Reader, edit: str = Query("", max_length=64)) -> Any:
    """``?edit=NAME`` fills the form with every setting of that destination, TLS included."""
    chosen = _stored(request, edit) if edit else None
    return _page(request, form=destination_form({**chosen, "original_name": edit}) if chosen else {})


@router.post("/destinations", include_in_schema=False)
async def destination_form_post(request: Request, who: AdminWrite) -> Any:
    form = await request.form()
    submitted = destination_table(form)
    original = str(form.get("original_name", "") or submitted["name"])
    table = merged_destination(_stored(request, original), submitted)
    result = config_edit.put(node_state(request), who.name, "destination", original, table)
    if not result.ok:
        return _page(request, errors=result.by_field(),
                     form=destination_form({**table, "original_name": form.get("original_name", "")}))
    return RedirectResponse("/destinations", status_code=303)


@router.post("/destinations/{name}/delete", include_in_schema=False)
def destination_delete_form(request: Request, who: AdminWrite, name: str = NAME) -> Any:
    result = config_edit.delete(node_state(request), who.name, "destination", name)
    if result is not None and not result.ok:
        return _page(request, errors=result.by_field())
    return RedirectResponse("/destinations", status_code=303)


@router.post("/destinations/{name}/test", include_in_schema=False)
def destination_test_form(request: Request, who: AdminWrite, name: str = NAME) -> Any:
    return _page(request, echo={"name": name, "result": test_destination(request, who, name)})


@router.post("/api/destinations/{name}/move", response_model=ConfigWriteOut, tags=["config"],
             responses={404: {"description": "no such destination"}})
def api_move_destination(request: Request, who: AdminWrite, name: str = NAME,
                         offset: int = Body(embed=True, ge=-1, le=1)) -> ConfigWriteOut:
    """Up (-1) or down (+1) in the stored order, which every list of destinations follows."""
    result = config_edit.move(node_state(request), who.name, "destination", name, offset)
    if result is None:
        raise HTTPException(status_code=404, detail=f"no destination {name!r}")
    return written(result)


@router.post("/destinations/{name}/{verb}", include_in_schema=False)
def destination_move_form(request: Request, who: AdminWrite, name: str = NAME,
                          verb: str = Path(pattern="^(up|down)$")) -> Any:
    result = config_edit.move(node_state(request), who.name, "destination", name, -1 if verb == "up" else 1)
    if result is not None and not result.ok:
        return _page(request, errors=result.by_field())
    return RedirectResponse("/destinations", status_code=303)
