"""*Re-run with another rule*: a job's series routed again with the rule an operator picks, as a new job (audited).

The rule is resolved with :func:`dicom_node.routing.routed_action` against the live config of the
moment, exactly as the completion sweep would, whether or not its match patterns fit the series
(the operator chose it; the audit entry says whether they fit). The new job's de-duplication key
names the job it re-runs, so asking twice enqueues it once.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Form, HTTPException, Path, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from dicom_node.db import audit, jobs, overview
from dicom_node.errors import ConfigError
from dicom_node.routing import SeriesAttributes, routed_action, rule_matches
from dicom_node.web.auth import OperatorWrite, Principal
from dicom_node.web.state import node_state

router = APIRouter()
MAX_ID = 2**31 - 1


class RerunIn(BaseModel):
    rule: str = Field(min_length=1, max_length=64, description="name of a routing rule of the live config")


class RerunOut(BaseModel):
    ok: bool
    job_id: int
    message: str


def rerun(request: Request, who: Principal, job_id: int, rule_name: str) -> RerunOut:
    state = node_state(request)
    settings = state.live.current()
    rule = next((r for r in settings.rules if r.name == rule_name), None)
    if rule is None:
        raise HTTPException(status_code=404, detail=f"no routing rule {rule_name!r}")
    with state.factory.begin() as session:
        job = overview.job(session, job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        series = overview.series_row(session, job.series_id)
        if series is None or series.instance_count == 0:
            raise HTTPException(status_code=409, detail=f"the series of job {job_id} holds no instances "
                                                        "(removed by housekeeping): send it again")
        try:
            action = routed_action(rule, settings)
        except ConfigError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        new = jobs.enqueue(session, series.id, series.series_uid, action, series.instance_count, rerun_of=job_id)
        if new is None:
            raise HTTPException(status_code=409, detail=f"job {job_id} was re-run with rule {rule_name!r} before")
        session.flush()
        attrs = SeriesAttributes(Modality=series.modality, BodyPartExamined=series.body_part,
                                 SeriesDescription=series.description)
        audit.record(session, who.name, "rerun", f"job {job_id}",
                     {"rule": rule_name, "new_job": new.id, "rule_matches_series": rule_matches(rule, attrs)})
        new_id = new.id
    return RerunOut(ok=True, job_id=new_id, message=f"job {new_id} queued: series {series.id} with rule {rule_name}")


@router.post("/api/jobs/{job_id}/rerun", response_model=RerunOut, tags=["jobs"],
             responses={404: {"description": "no such job or rule"},
                        409: {"description": "the series is gone, the rule cannot be routed, or re-run before"}})
def api_rerun(request: Request, who: OperatorWrite, job_id: int = Path(ge=1, le=MAX_ID),
              body: RerunIn = Body(...)) -> RerunOut:
    return rerun(request, who, job_id, body.rule)


@router.post("/jobs/{job_id}/rerun", include_in_schema=False)
def rerun_form(request: Request, who: OperatorWrite, job_id: int = Path(ge=1, le=MAX_ID),
               rule: str = Form(min_length=1, max_length=64)) -> Any:
    out = rerun(request, who, job_id, rule)
    return RedirectResponse(f"/jobs/{out.job_id}", status_code=303)
