"""Output templates of the live config: list, create, edit, delete; each field's error from the settings model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.responses import RedirectResponse

from dicom_node.settings import OUTPUT_KINDS, SEG_TYPES
from dicom_node.web import config_edit
from dicom_node.web.auth import AdminWrite, Reader
from dicom_node.web.forms import template_table
from dicom_node.web.routes.destinations import NAME, written
from dicom_node.web.schemas import ConfigWriteOut
from dicom_node.web.state import node_state, render

router = APIRouter()


@router.get("/api/templates", response_model=list[dict[str, Any]], tags=["config"])
def api_templates(request: Request, _who: Reader) -> list[dict[str, Any]]:
    return config_edit.tables(node_state(request))["template"]


@router.put("/api/templates/{name}", response_model=ConfigWriteOut, tags=["config"])
def api_put_template(request: Request, who: AdminWrite, name: str = NAME,
                     body: dict[str, Any] = Body(...)) -> ConfigWriteOut:
    return written(config_edit.put(node_state(request), who.name, "template", name, {"name": name, **body}))


@router.delete("/api/templates/{name}", response_model=ConfigWriteOut, tags=["config"],
               responses={404: {"description": "no such template"}})
def api_delete_template(request: Request, who: AdminWrite, name: str = NAME) -> ConfigWriteOut:
    result = config_edit.delete(node_state(request), who.name, "template", name)
    if result is None:
        raise HTTPException(status_code=404, detail=f"no template {name!r}")
    return written(result)


def _form_of(table: dict[str, Any]) -> dict[str, Any]:
    """A stored (or submitted) table as the form's text fields."""
    def lines(value: Any, join: bool) -> str:
        if not isinstance(value, dict):
            return str(value or "")
        return "\n".join(f"{k} = {', '.join(v) if join else v}" for k, v in value.items())
    return {"name": table.get("name", ""), "include": ", ".join(table.get("include") or []),
            "map": lines(table.get("map"), False),
            "rename": lines(table.get("rename"), False), "merge": lines(table.get("merge"), True),
            "outputs": list(table.get("outputs") or []), "seg_type": table.get("seg_type", ""),
            "original_name": table.get("original_name", table.get("name", ""))}


def _page(request: Request, **context: Any) -> Any:
    rows = config_edit.tables(node_state(request))["template"]
    return render(request, "templates.html", {"rows": rows, "errors": {}, "form": {}, "output_kinds": OUTPUT_KINDS,
                                              "seg_types": SEG_TYPES, **context},
                  status_code=400 if context.get("errors") else 200)


@router.get("/templates", include_in_schema=False)
def templates_page(request: Request, _who: Reader, edit: str = Query("", max_length=64)) -> Any:
    chosen = next((t for t in config_edit.tables(node_state(request))["template"] if t.get("name") == edit), None)
    return _page(request, form=_form_of(chosen) if chosen else {})


@router.post("/templates", include_in_schema=False)
async def template_form(request: Request, who: AdminWrite) -> Any:
    form = await request.form()
    table = template_table(form)
    original = str(form.get("original_name", "") or table["name"])
    result = config_edit.put(node_state(request), who.name, "template", original, table)
    if not result.ok:
        return _page(request, errors=result.by_field(), form={**_form_of(table), "original_name": original})
    return RedirectResponse("/templates", status_code=303)


@router.post("/templates/{name}/delete", include_in_schema=False)
def template_delete_form(request: Request, who: AdminWrite, name: str = NAME) -> Any:
    result = config_edit.delete(node_state(request), who.name, "template", name)
    if result is not None and not result.ok:
        return _page(request, errors=result.by_field())
    return RedirectResponse("/templates", status_code=303)
