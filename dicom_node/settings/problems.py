"""Config errors as a user reads them: the key's path in the TOML, then what is wrong, one per line.

Pydantic reports every error of a document at once with a location such as
``('routing', 'rules', 2, 'match', 'Modalty', '[key]')``; here that becomes
``routing.rules[2].match.Modalty`` and the message says what was expected in TOML terms.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from dicom_node.errors import ConfigError

Location = Sequence[str | int]
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_EXPECTED = {
    "int_type": "int", "float_type": "int or float", "string_type": "str", "bool_type": "bool (true or false)",
    "tuple_type": "an array", "list_type": "an array", "dict_type": "a table",
}
_NOT_A_TABLE = {"model_type", "dataclass_type", "dataclass_exact_type", "model_attributes_type"}
_UNKNOWN_KEY = {"extra_forbidden", "unexpected_keyword_argument"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a config: where (TOML path; empty for the whole file) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def toml_path(location: Location) -> str:
    """('routing', 'rules', 2, 'match', 'Modalty') -> routing.rules[2].match.Modalty; odd keys are quoted."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]":  # pydantic marks a dict key that failed; the key is already in the path
            key = part if _BARE_KEY.match(part) else json.dumps(part)
            text += f".{key}" if text else key
    return text


def config_error(problems: Sequence[Problem], source: object | None = None) -> ConfigError:
    """One ConfigError listing every problem, one per line."""
    where = f"config {source}" if source is not None else "config"
    count = f"{len(problems)} error" + ("s" if len(problems) != 1 else "")
    return ConfigError("\n".join([f"invalid {where} ({count}):", *(f"  {p}" for p in problems)]))


def problems_from(error: ValidationError, root: type[BaseModel], prefix: Location = ()) -> list[Problem]:
    """Pydantic's errors (locations relative to ``prefix`` within ``root``) as problems with TOML paths."""
    return [_problem(detail, root, (*prefix, *detail["loc"])) for detail in error.errors()]


def _problem(detail: ErrorDetails, root: type[BaseModel], location: Location) -> Problem:
    kind, value = detail["type"], detail.get("input")
    path = toml_path(location)
    if kind == "config_value":
        return Problem(path, str((detail.get("ctx") or {}).get("message", detail["msg"])))
    if kind == "missing":
        return Problem(path, "missing (required)")
    if kind in _UNKNOWN_KEY:
        owner = _type_at(root, location[:-1])
        replaced = getattr(_unwrap(owner), "REPLACED_KEYS", {}).get(location[-1]) if location else None
        if replaced:
            return Problem(path, str(replaced))
        known = _keys_of(owner)
        return Problem(path, "unknown key" + (f"; known: {', '.join(sorted(known))}" if known else ""))
    target = _type_at(root, location)
    if kind in _NOT_A_TABLE:
        header = f"[[{toml_path(location[:-1])}]]" if location and isinstance(location[-1], int) else f"[{path}]"
        return Problem(path, f"must be a table ({header}), got {_describe(value)}")
    if kind in {"tuple_type", "list_type"} and _keys_of(_item_type(target)):
        return Problem(path, f"must be an array of tables ([[{path}]]), got {_describe(value)}")
    if kind in _EXPECTED:
        return Problem(path, f"expected {_EXPECTED[kind]}, got {_describe(value)}")
    return Problem(path, detail["msg"])


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _unwrap(kind: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X."""
    while True:
        origin = get_origin(kind)
        if origin is Annotated:
            kind = get_args(kind)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(kind) if a is not type(None)]
            if len(members) != 1:
                return kind
            kind = members[0]
        else:
            return kind


def _fields(kind: Any) -> dict[str, Any] | None:
    """Field name -> annotation of a model or pydantic dataclass; None for anything else."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return {name: info.annotation for name, info in kind.model_fields.items()}
    fields = getattr(kind, "__pydantic_fields__", None)
    return {name: info.annotation for name, info in fields.items()} if isinstance(fields, dict) else None


def _keys_of(kind: Any) -> Iterable[str]:
    return tuple(_fields(_unwrap(kind)) or ())


def _item_type(kind: Any) -> Any:
    args = get_args(_unwrap(kind))
    return args[0] if args else None


def _type_at(root: type[BaseModel], location: Location) -> Any:
    """The declared type at a location in the document, or None where the location leaves the models."""
    kind: Any = root
    for part in location:
        if isinstance(part, int):
            kind = _item_type(kind)
        else:
            fields = _fields(_unwrap(kind))
            if fields is None or part not in fields:
                return None
            kind = fields[part]
    return kind
