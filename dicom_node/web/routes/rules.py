"""Routing rules of the live config: the ordered list (with fallback rules), the editor, and the dry-run tester.

The tester takes a stored series or an uploaded DICOM file and shows which rules match and why each
other rule does not (``dicom_node.routing.explain``), and the jobs the series would get.
"""

from __future__ import annotations

import io
from typing import Any

import pydicom
from fastapi import APIRouter, Body, File, Form, HTTPException, Path, Request, UploadFile
from fastapi.responses import RedirectResponse
from pydicom.errors import InvalidDicomError

from dicom_node.db import overview
from dicom_node.errors import ConfigError
from dicom_node.routing import SeriesAttributes, explain, route
from dicom_node.settings import MATCH_KEYWORDS, OUTPUT_KINDS, SEG_TYPES
from dicom_node.web import config_edit
from dicom_node.web.auth import AdminWrite, Reader, ReaderPost
from dicom_node.web.forms import rule_table
from dicom_node.web.routes.destinations import NAME, written
from dicom_node.web.schemas import ConfigWriteOut, DryRunOut, VerdictOut
from dicom_node.web.state import node_state, render

router = APIRouter()
MAX_ID = 2**31 - 1


def dry_run(request: Request, attrs: SeriesAttributes) -> DryRunOut:
    settings = node_state(request).live.current()
    verdicts = [VerdictOut(rule=v.rule_name, applies=v.applies, fallback=v.fallback, reasons=list(v.reasons))
                for v in explain(settings.rules, attrs)]
    try:
        jobs = [a.model_dump(mode="json") for a in route(settings, attrs)]
        error = ""
    except ConfigError as exc:
        jobs, error = [], str(exc)
    return DryRunOut(attributes={k: attrs.get(k) or "" for k in MATCH_KEYWORDS}, verdicts=verdicts, jobs=jobs,
                     error=error)


def stored_attributes(request: Request, series_id: int) -> SeriesAttributes:
    with node_state(request).factory() as session:
        row = overview.series_row(session, series_id)
    if row is None:
        raise HTTPException(status_code=404, detail=f"no series {series_id}")
    return SeriesAttributes(Modality=row.modality, BodyPartExamined=row.body_part, SeriesDescription=row.description)


def file_attributes(data: bytes) -> SeriesAttributes:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=list(MATCH_KEYWORDS))
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise HTTPException(status_code=400, detail=f"not a DICOM file: {exc}") from exc
    return SeriesAttributes(**{k: str(ds.get(k, "") or "") for k in MATCH_KEYWORDS})


@router.get("/api/rules", response_model=list[dict[str, Any]], tags=["config"])
def api_rules(request: Request, _who: Reader) -> list[dict[str, Any]]:
    return config_edit.tables(node_state(request))["rule"]


@router.put("/api/rules/{name}", response_model=ConfigWriteOut, tags=["config"])
def api_put_rule(request: Request, who: AdminWrite, name: str = NAME,
                 body: dict[str, Any] = Body(...)) -> ConfigWriteOut:
    return written(config_edit.put(node_state(request), who.name, "rule", name, {"name": name, **body}))


@router.delete("/api/rules/{name}", response_model=ConfigWriteOut, tags=["config"],
               responses={404: {"description": "no such rule"}})
def api_delete_rule(request: Request, who: AdminWrite, name: str = NAME) -> ConfigWriteOut:
    result = config_edit.delete(node_state(request), who.name, "rule", name)
    if result is None:
        raise HTTPException(status_code=404, detail=f"no rule {name!r}")
    return written(result)


@router.get("/api/rules/dry-run/{series_id}", response_model=DryRunOut, tags=["config"],
            responses={404: {"description": "no such series"}})
def api_dry_run(request: Request, _who: Reader, series_id: int = Path(ge=1, le=MAX_ID)) -> DryRunOut:
    return dry_run(request, stored_attributes(request, series_id))


def _page(request: Request, **context: Any) -> Any:
    state = node_state(request)
    tables = config_edit.tables(state)
    with state.factory() as session:
        recent = overview.series_list(session, limit=50)
    return render(request, "rules.html", {
        "rows": tables["rule"], "destinations": [d["name"] for d in tables["destination"]],
        "templates": [t["name"] for t in tables["template"]], "output_kinds": OUTPUT_KINDS, "seg_types": SEG_TYPES,
        "match_keywords": MATCH_KEYWORDS, "recent_series": recent, "errors": {}, "form": {}, "dry": None,
        "notifications": state.settings.notifications,
        **context}, status_code=400 if context.get("errors") else 200)


@router.get("/rules", include_in_schema=False)
def rules_page(request: Request, _who: Reader) -> Any:
    return _page(request)


@router.post("/rules", include_in_schema=False)
async def rule_form(request: Request, who: AdminWrite) -> Any:
    form = await request.form()
    table = rule_table(form)
    original = str(form.get("original_name", "") or table["name"])
    result = config_edit.put(node_state(request), who.name, "rule", original, table)
    if not result.ok:
        return _page(request, errors=result.by_field(), form=table)
    return RedirectResponse("/rules", status_code=303)


@router.post("/rules/{name}/{verb}", include_in_schema=False)
def rule_change_form(request: Request, who: AdminWrite, name: str = NAME,
                     verb: str = Path(pattern="^(delete|up|down)$")) -> Any:
    state = node_state(request)
    if verb == "delete":
        result = config_edit.delete(state, who.name, "rule", name)
    else:
        result = config_edit.move(state, who.name, "rule", name, -1 if verb == "up" else 1)
    if result is not None and not result.ok:
        return _page(request, errors=result.by_field())
    return RedirectResponse("/rules", status_code=303)


@router.post("/dry-run", include_in_schema=False)
async def dry_run_form(request: Request, _who: ReaderPost, series_id: str = Form(""),
                       file: UploadFile | None = File(None)) -> Any:
    if file is not None and file.filename:
        attrs = file_attributes(await file.read())
        source = f"uploaded file {file.filename}"
    elif series_id.isdigit() and 0 < int(series_id) <= MAX_ID:
        attrs = stored_attributes(request, int(series_id))
        source = f"stored series {series_id}"
    else:
        raise HTTPException(status_code=400, detail="choose a stored series or upload a DICOM file")
    return _page(request, dry={"source": source, "result": dry_run(request, attrs)})
