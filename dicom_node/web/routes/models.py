"""Models: the registry's models (id, version, kind, parts or heads, size) and the *Check* button (audited)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel

from dicom_node.db import audit
from dicom_node.web import model_registry
from dicom_node.web.auth import AdminWrite, Principal, Reader
from dicom_node.web.state import node_state, render

router = APIRouter()
MODEL_ID = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")


class ModelOut(BaseModel):
    id: str
    version: str
    kind: str
    parts: list[str]
    size_bytes: int
    archived: list[str]
    problem: str


class CheckOut(BaseModel):
    ok: bool
    message: str


def models_of(request: Request) -> list[ModelOut]:
    views = model_registry.list_models(node_state(request).settings.models.dir)
    return [ModelOut(**{**v.__dict__, "parts": list(v.parts), "archived": list(v.archived)}) for v in views]


def run_check(request: Request, who: Principal, model_id: str) -> CheckOut:
    state = node_state(request)
    result = model_registry.check(state.settings.models.dir, model_id)
    with state.factory.begin() as session:
        audit.record(session, who.name, "model-check", f"model {model_id}", {"ok": result.ok, "result": result.message})
    return CheckOut(ok=result.ok, message=result.message)


@router.get("/api/models", response_model=list[ModelOut], tags=["models"])
def api_models(request: Request, _who: Reader) -> list[ModelOut]:
    return models_of(request)


@router.post("/api/models/{model_id}/check", response_model=CheckOut, tags=["models"])
def api_check(request: Request, who: AdminWrite, model_id: str = MODEL_ID) -> CheckOut:
    return run_check(request, who, model_id)


@router.get("/models", include_in_schema=False)
def models_page(request: Request, _who: Reader) -> Any:
    return render(request, "models.html", {"rows": models_of(request), "checked": None})


@router.post("/models/{model_id}/check", include_in_schema=False)
def check_form(request: Request, who: AdminWrite, model_id: str = MODEL_ID) -> Any:
    checked = {"id": model_id, "result": run_check(request, who, model_id)}
    return render(request, "models.html", {"rows": models_of(request), "checked": checked})
