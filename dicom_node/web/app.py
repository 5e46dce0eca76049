"""The app factory: routes, the package's templates and static files, and what an unauthenticated request gets."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import __version__
from dicom_node.live_config import LiveConfig
from dicom_node.settings import Settings
from dicom_node.web.auth import Authenticated, LoginRequired
from dicom_node.web.ratelimit import LoginLimiter
from dicom_node.web.routes import (
    dashboard,
    deliveries,
    destinations,
    job_rerun,
    jobs,
    login,
    metrics,
    models,
    people,
    review,
    rules,
    series,
    templates_page,
    users_admin,
)
from dicom_node.web.state import STATIC_DIR, TEMPLATES_DIR, NodeState, render

log = logging.getLogger(__name__)
SECURITY_HEADERS = {
    # every asset is the app's own: no script, style or image from anywhere else, no framing
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
}


def create_app(settings: Settings, factory: sessionmaker[Session]) -> FastAPI:
    app = FastAPI(title="dicom-node admin", version=__version__,
                  description="Admin API of the DICOM auto-contouring node. Authenticate with a session cookie "
                              "(and X-CSRF-Token on writes) or `Authorization: Bearer <token>` "
                              "from `dicom-node users token NAME`.",
                  openapi_url=None, docs_url=None, redoc_url=None)  # served below, behind the login
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    app.state.node = NodeState(settings=settings, factory=factory, live=LiveConfig(settings, factory),
                               limiter=LoginLimiter(settings.web.login_failures_allowed,
                                                    settings.web.login_window_seconds),
                               templates=templates)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    # job_rerun before jobs: its /jobs/{id}/rerun would otherwise meet jobs' /jobs/{id}/{retry|cancel}
    for module in (login, dashboard, series, job_rerun, jobs, deliveries, people, users_admin, destinations, rules,
                   templates_page, models, metrics, review):
        app.include_router(module.router)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_who: Authenticated) -> dict[str, Any]:
        return app.openapi()

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(LoginRequired)
    def login_required(request: Request, _exc: LoginRequired) -> Response:
        if request.url.path.startswith("/api/") or request.url.path == "/openapi.json":
            return JSONResponse({"detail": "authentication required"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # the API answers FastAPI's JSON 422; a page's form gets a page that says what to fix
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", "text/html"):
            return await request_validation_exception_handler(request, exc)
        problems = [f"{'.'.join(str(part) for part in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', '')}"
                    for e in exc.errors()]
        back = urlsplit(request.headers.get("referer", "")).path or "/"  # only a path of this app
        return render(request, "invalid.html", {"problems": problems, "back": back},  # type: ignore[no-any-return]
                      status_code=422)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    return app
