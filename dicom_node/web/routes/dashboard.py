"""Dashboard: the listener, the workers (heartbeat, device, current job), queue depth, free disk, last failures."""

from __future__ import annotations

import shutil
from typing import Any

from fastapi import APIRouter, Request

from dicom_node.db import config_store, overview
from dicom_node.db.tables import JobStatus
from dicom_node.web.auth import Reader
from dicom_node.web.schemas import DashboardOut, FailureOut, WorkerOut
from dicom_node.web.state import node_state, render

router = APIRouter()


def free_disk_mb(path: object) -> int | None:
    try:
        return int(shutil.disk_usage(str(path)).free // (1024 * 1024))
    except OSError:
        return None


def dashboard_data(request: Request) -> DashboardOut:
    state = node_state(request)
    with state.factory() as session:
        counts = overview.jobs_by_status(session)
        return DashboardOut(
            listener_open_associations=overview.open_associations(session),
            last_instance_at=overview.last_instance_at(session),
            workers=[WorkerOut(**w.__dict__) for w in overview.workers(session)],
            queue_depth=counts[JobStatus.QUEUED.value], jobs_by_status=counts,
            free_disk_mb=free_disk_mb(state.settings.node.storage_dir),
            config_version=config_store.version(session),
            last_failures=[FailureOut(job_id=j.id, rule_name=j.rule_name, error=f"{j.error_class}: {j.error_message}",
                                      finished_at=j.finished_at) for j in overview.recent_failures(session)])


@router.get("/api/dashboard", response_model=DashboardOut, tags=["dashboard"])
def api_dashboard(request: Request, _who: Reader) -> DashboardOut:
    return dashboard_data(request)


@router.get("/", include_in_schema=False)
def dashboard_page(request: Request, _who: Reader) -> Any:
    return render(request, "dashboard.html", {"d": dashboard_data(request)})
