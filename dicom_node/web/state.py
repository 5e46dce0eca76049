"""What every route needs: the settings, the index, the live config, the login limiter and the templates."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.live_config import LiveConfig
from dicom_node.settings import Settings
from dicom_node.web.ratelimit import LoginLimiter

TEMPLATES_DIR = resources.files("dicom_node.web").joinpath("templates")
STATIC_DIR = resources.files("dicom_node.web").joinpath("static")


@dataclass
class NodeState:
    settings: Settings
    factory: sessionmaker[Session]
    live: LiveConfig
    limiter: LoginLimiter
    templates: Jinja2Templates


def node_state(request: Request) -> NodeState:
    state: NodeState = request.app.state.node
    return state


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Any:
    """A page from the package's templates, with the signed-in user and the CSRF token in its context."""
    state = node_state(request)
    principal = getattr(request.state, "principal", None)
    full = {"principal": principal, "csrf_token": getattr(principal, "csrf_token", "") or "",
            "node": state.settings.node, **context}
    return state.templates.TemplateResponse(request, name, full, status_code=status_code)
