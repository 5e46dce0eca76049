"""docs/configuration.md lists every key of the config models, in order, with their types and defaults."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dicom_node.settings import (
    CompletionSettings,
    ConfigDocument,
    Destination,
    DestinationTls,
    HousekeepingSettings,
    IdentitySettings,
    ListenerTls,
    ModelsSettings,
    NodeSettings,
    RoutingRule,
    Template,
    WebSettings,
    WorkerSettings,
    config_json_schema,
)
from dicom_node.settings.structures import DepartmentStructure
from tests.conftest import REPO

DOC = REPO / "docs" / "configuration.md"
TABLES: dict[str, type[Any]] = {
    "Sections": ConfigDocument, "[node]": NodeSettings, "[completion]": CompletionSettings,
    "[worker]": WorkerSettings, "[identity]": IdentitySettings, "[[destinations]]": Destination,
    "[[routing.rules]]": RoutingRule, "[[templates]]": Template, "[models]": ModelsSettings,
    "[housekeeping]": HousekeepingSettings, "[web]": WebSettings, "[node.tls]": ListenerTls,
    "[destinations.tls]": DestinationTls, "[[structures]]": DepartmentStructure,
}
# defaults the loader derives or TOML cannot write: documented in words
DESCRIBED_DEFAULTS = {("[worker]", "output_dir"): "`<node.storage_dir>/outputs`", ("[models]", "dir"): '`""`',
                      ("[node]", "tls"): "TLS off", ("[[destinations]]", "tls"): "TLS off",
                      ("[[structures]]", "category"): "by type", ("[[structures]]", "modifier"): "none",
                      **{(table, key): '`""`' for table in ("[node.tls]", "[destinations.tls]")
                         for key in ("cert_file", "key_file", "ca_file")}}


def _documented(path: Path) -> dict[str, list[list[str]]]:
    """Heading -> the rows (cells) of the key table under it."""
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith("| `") and heading:
            tables.setdefault(heading, []).append([cell.strip() for cell in line.strip("|").split(" | ")])
    return tables


def _fields(model: type[Any]) -> dict[str, Any]:
    return dict(model.model_fields if model is ConfigDocument else model.__pydantic_fields__)


def _schema_of(model: type[Any]) -> dict[str, Any]:
    schema = config_json_schema()
    return schema if model is ConfigDocument else schema["$defs"][model.__name__]


def _doc_type(prop: dict[str, Any]) -> str:
    """The type words the reference uses for a JSON Schema property."""
    if "anyOf" in prop and "type" not in prop:
        prop = next(p for p in prop["anyOf"] if p.get("type") != "null")
    if "$ref" in prop:
        return "table"
    kind = prop["type"]
    if kind == "array":
        items = prop["items"]
        return "array of tables" if "$ref" in items else f"array of {_doc_type(items)}s"
    if kind == "object":
        values = prop.get("additionalProperties", {})
        return f"table of {_doc_type(values).replace('array of ', 'arrays of ')}" \
            if values.get("type") == "array" else f"table of {_doc_type(values)}s"
    if kind == "string" and prop.get("format") == "path":
        return "path"
    return {"number": "float", "integer": "integer", "string": "string", "boolean": "boolean"}[kind]


def _toml_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_toml_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def test_every_table_of_the_models_is_documented() -> None:
    assert set(_documented(DOC)) == set(TABLES)


@pytest.mark.parametrize("heading", list(TABLES))
def test_every_key_is_documented_in_order_with_its_type_and_default(heading: str) -> None:
    model, rows = TABLES[heading], _documented(DOC)[heading]
    fields = _fields(model)
    assert [row[0].strip("`") for row in rows] == list(fields), f"{heading}: keys differ from the model's"
    properties = _schema_of(model)["properties"]
    for key, kind, default, *_ in ([row[0].strip("`"), *row[1:]] for row in rows):
        field = fields[key]
        assert kind == _doc_type(properties[key]), f"{heading} {key}: type"
        if field.is_required():
            assert default == "required", f"{heading} {key}: required in the model"
        elif (heading, key) in DESCRIBED_DEFAULTS:
            assert default == DESCRIBED_DEFAULTS[heading, key]
        elif model is not ConfigDocument:  # section defaults are tables: described in words
            assert re.fullmatch(r"`[^`]+`", default), f"{heading} {key}: default {default!r} is not a TOML value"
            value = tomllib.loads(f"v = {default.strip('`')}")["v"]
            assert value == _toml_value(field.get_default(call_default_factory=True)), f"{heading} {key}: default"
