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
DESTINATION_TLS_FILES = ("cert_file", "key_file", "ca_file")
# the keys the destination form shows (and sets or, left empty, resets to their default)
DESTINATION_FORM_KEYS = ("name", "ae_title", "host", *DESTINATION_INTS, *DESTINATION_FLOATS, "accepts_labelmap_seg",
                         "seg_transfer_syntaxes", "tls")


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
    """The [[destinations]] table of the form: every key in :data:`DESTINATION_FORM_KEYS` it sets (an
    empty number: the default); ``tls`` only when TLS is on or a TLS field differs from its default."""
    table: dict[str, Any] = {"name": _text(form, "name"), "ae_title": _text(form, "ae_title"),
                             "host": _text(form, "host")}
    table.update({k: _int(_text(form, k)) for k in DESTINATION_INTS if _text(form, k)})
    table.update({k: _float(_text(form, k)) for k in DESTINATION_FLOATS if _text(form, k)})
    table["accepts_labelmap_seg"] = bool(form.get("accepts_labelmap_seg"))
    syntaxes = _names(_text(form, "seg_transfer_syntaxes"))
    if syntaxes:
        table["seg_transfer_syntaxes"] = syntaxes
    files = {k: _text(form, f"tls_{k}") for k in DESTINATION_TLS_FILES if _text(form, f"tls_{k}")}
    tls: dict[str, Any] = {"enabled": bool(form.get("tls_enabled")), **files,
                           "min_version": _text(form, "tls_min_version") or "1.2",
                           "check_hostname": bool(form.get("tls_check_hostname"))}
    if tls["enabled"] or files or tls["min_version"] != "1.2" or not tls["check_hostname"]:
        table["tls"] = tls
    return table


def destination_form(table: dict[str, Any]) -> dict[str, Any]:
    """A stored (or submitted) [[destinations]] table as the form's fields (the inverse of the above)."""
    out: dict[str, Any] = {k: v for k, v in table.items() if k in (*DESTINATION_FORM_KEYS, "original_name")
                           and k not in ("tls", "seg_transfer_syntaxes")}
    syntaxes = table.get("seg_transfer_syntaxes")
    out["seg_transfer_syntaxes"] = ", ".join(syntaxes) if isinstance(syntaxes, list | tuple) else str(syntaxes or "")
    raw = table.get("tls")
    tls: dict[str, Any] = raw if isinstance(raw, dict) else {}
    out["tls_enabled"] = bool(tls.get("enabled", False))
    out.update({f"tls_{k}": str(tls.get(k) or "") for k in DESTINATION_TLS_FILES})
    out["tls_min_version"] = str(tls.get("min_version", "1.2"))
    out["tls_check_hostname"] = bool(tls.get("check_hostname", True))
    return out


def merged_destination(stored: dict[str, Any] | None, submitted: dict[str, Any]) -> dict[str, Any]:
    """The submitted table over the stored one: keys the form does not show are kept as they were."""
    kept = {k: v for k, v in (stored or {}).items() if k not in DESTINATION_FORM_KEYS}
    return {**kept, **submitted}


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
