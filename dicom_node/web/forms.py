"""HTML form fields -> the TOML-shaped tables the settings models check (numbers made numbers, lists split).

Nothing is validated here: a value that is not a number stays text, so the settings model reports it
on its own field (``port: expected int``) like a wrong value in the TOML.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData

from dicom_node.settings import MATCH_KEYWORDS

DESTINATION_INTS = ("port",)
DESTINATION_FLOATS = ("max_age_hours", "retry_backoff_seconds", "retry_max_backoff_seconds", "timeout_seconds")


def _text(form: FormData, key: str) -> str:
    value = form.get(key, "")
    return value.strip() if isinstance(value, str) else ""


def _int(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text


def _float(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def destination_table(form: FormData) -> dict[str, Any]:
    table: dict[str, Any] = {"name": _text(form, "name"), "ae_title": _text(form, "ae_title"),
                             "host": _text(form, "host")}
    table.update({k: _int(_text(form, k)) for k in DESTINATION_INTS if _text(form, k)})
    table.update({k: _float(_text(form, k)) for k in DESTINATION_FLOATS if _text(form, k)})
    table["accepts_labelmap_seg"] = bool(form.get("accepts_labelmap_seg"))
    return table


def rule_table(form: FormData) -> dict[str, Any]:
    table: dict[str, Any] = {"name": _text(form, "name"), "model": _text(form, "model"),
                             "destinations": _names(_text(form, "destinations"))}
    outputs = [o for o in form.getlist("outputs") if isinstance(o, str)]
    if outputs:
        table["outputs"] = outputs
    match = {k: _text(form, f"match_{k}") for k in MATCH_KEYWORDS if _text(form, f"match_{k}")}
    table["match"] = match
    table["template"] = _text(form, "template")
    table["seg_type"] = _text(form, "seg_type") or "BINARY"
    table["seg_max_segments"] = _int(_text(form, "seg_max_segments") or "0")
    table["fallback"] = bool(form.get("fallback"))
    table["review"] = _text(form, "review") or "none"
    table["reviewers"] = _names(_text(form, "reviewers"))
    table["notify"] = _names(_text(form, "notify"))
    return table


def _mapping(text: str, split_values: bool) -> Any:
    """``key = value`` lines -> a dict (values split on commas when ``split_values``); the text itself
    when a line has no ``=``, so the model reports the field as not a mapping."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            return text
        out[key.strip()] = _names(value) if split_values else value.strip()
    return out


def template_table(form: FormData) -> dict[str, Any]:
    table: dict[str, Any] = {"name": _text(form, "name"), "map": _mapping(_text(form, "map"), split_values=False),
                             "include": _names(_text(form, "include")),
                             "rename": _mapping(_text(form, "rename"), split_values=False),
                             "merge": _mapping(_text(form, "merge"), split_values=True),
                             "outputs": [o for o in form.getlist("outputs") if isinstance(o, str)],
                             "seg_type": _text(form, "seg_type")}
    return table
