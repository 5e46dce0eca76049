"""Jobs: state, stage timings, model id/version, device, error, QA preview; retry and cancel (audited)."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, RedirectResponse

from dicom_node.db import audit, job_actions, overview
from dicom_node.db.job_actions import JobActionError
from dicom_node.db.tables import JobStatus
from dicom_node.web.auth import OperatorWrite, Principal, Reader
from dicom_node.web.schemas import ActionOut, DeliveryOut, JobDetailOut, JobOut
from dicom_node.web.state import node_state, render

router = APIRouter()
MAX_ID = 2**31 - 1
STATUSES = "|".join(s.value for s in JobStatus)
STATUS = Query("", pattern=f"^({STATUSES})?$")
PREVIEW_PNG = "preview.png"  # as dicom_node.pipeline.PREVIEW_PNG (the pipeline is the worker side's)


def preview_path(request: Request, job_id: int) -> FilePath:
    return node_state(request).settings.worker.output_dir / f"job-{job_id:06d}" / PREVIEW_PNG


def job_list(request: Request, status: str, limit: int) -> list[JobOut]:
    with node_state(request).factory() as session:
        return [JobOut.of(j, overview.timings_of(j)) for j in overview.jobs_list(session, status, limit=limit)]


def job_detail(request: Request, job_id: int) -> JobDetailOut:
    with node_state(request).factory() as session:
        row = overview.job(session, job_id)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return JobDetailOut(job=JobOut.of(row, overview.timings_of(row)),
                            deliveries=[DeliveryOut.of(d) for d in row.deliveries],
                            has_preview=preview_path(request, job_id).is_file())


def act(request: Request, who: Principal, job_id: int, action: str) -> ActionOut:
    with node_state(request).factory.begin() as session:
        try:
            if action == "retry":
                message = job_actions.retry(session, job_id)
            else:
                job_actions.cancel(session, job_id, who.name)
                message = "cancelled"
        except JobActionError as exc:
            if overview.job(session, job_id) is None:
                raise HTTPException(status_code=404, detail=str(exc)) from exc
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        audit.record(session, who.name, action, f"job {job_id}", {"result": message})
    return ActionOut(ok=True, message=message)


@router.get("/api/jobs", response_model=list[JobOut], tags=["jobs"])
def api_jobs(request: Request, _who: Reader, status: str = STATUS,
             limit: int = Query(100, ge=1, le=1000)) -> list[JobOut]:
    return job_list(request, status, limit)


@router.get("/api/jobs/{job_id}", response_model=JobDetailOut, tags=["jobs"],
            responses={404: {"description": "no such job"}})
def api_job(request: Request, _who: Reader, job_id: int = Path(ge=1, le=MAX_ID)) -> JobDetailOut:
    return job_detail(request, job_id)


@router.post("/api/jobs/{job_id}/retry", response_model=ActionOut, tags=["jobs"],
             responses={404: {"description": "no such job"}, 409: {"description": "not failed or delivering"}})
def api_retry(request: Request, who: OperatorWrite, job_id: int = Path(ge=1, le=MAX_ID)) -> ActionOut:
    return act(request, who, job_id, "retry")


@router.post("/api/jobs/{job_id}/cancel", response_model=ActionOut, tags=["jobs"],
             responses={404: {"description": "no such job"}, 409: {"description": "not queued or delivering"}})
def api_cancel(request: Request, who: OperatorWrite, job_id: int = Path(ge=1, le=MAX_ID)) -> ActionOut:
    return act(request, who, job_id, "cancel")


@router.get("/jobs", include_in_schema=False)
def jobs_page(request: Request, _who: Reader, status: str = STATUS) -> Any:
    return render(request, "jobs.html", {"rows": job_list(request, status, 200), "status": status})


@router.get("/jobs/{job_id}", include_in_schema=False)
def job_page(request: Request, _who: Reader, job_id: int = Path(ge=1, le=MAX_ID)) -> Any:
    rules = [r.name for r in node_state(request).live.current().rules]  # for "re-run with another rule"
    return render(request, "job.html", {"d": job_detail(request, job_id), "rules": rules})


@router.get("/jobs/{job_id}/preview.png", include_in_schema=False)
def job_preview(request: Request, _who: Reader, job_id: int = Path(ge=1, le=MAX_ID)) -> Any:
    path = preview_path(request, job_id)
    if not path.is_file():
        raise HTTPException(status_code=404, detail="no preview")
    return FileResponse(path, media_type="image/png")


@router.post("/jobs/{job_id}/{action}", include_in_schema=False)
def job_action_form(request: Request, who: OperatorWrite, job_id: int = Path(ge=1, le=MAX_ID),
                    action: str = Path(pattern="^(retry|cancel)$")) -> Any:
    act(request, who, job_id, action)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)
