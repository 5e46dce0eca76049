"""Loading a config: TOML -> every problem at once (one ConfigError) or validated :class:`Settings`.

Relative paths are resolved against the directory of the config file (given to the validators as
context), so a config means the same thing whatever the working directory.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from dicom_node.errors import ConfigError
from dicom_node.settings.crosschecks import cross_check
from dicom_node.settings.document import ConfigDocument, Settings
from dicom_node.settings.problems import Problem, config_error, problems_from
from dicom_node.settings.rules import Template
from dicom_node.settings.sections import ModelsSettings
from dicom_node.settings.structures import department_names, template_structure_problems
from dicom_node.settings.tls import tls_problems


def parse_settings(data: dict[str, Any], base: Path, source: Path | None = None) -> Settings:
    """Validate a parsed TOML document; ``base`` resolves relative paths, ``source`` names the file."""
    problems: list[Problem] = []
    document: ConfigDocument | None = None
    try:
        document = ConfigDocument.model_validate(data, context={"base": base})
    except ValidationError as exc:
        problems.extend(problems_from(exc, ConfigDocument))
    problems.extend(template_structure_problems(data, department_names(data)))
    problems.extend(cross_check(data))
    problems.extend(tls_problems(data, base))  # the certificate and key files load
    if problems or document is None:
        raise config_error(problems, source)
    return document.to_settings(source)


def load_settings(path: Path) -> Settings:
    """Load and validate a TOML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    source = path.resolve()
    return parse_settings(data, source.parent, source)


@lru_cache(maxsize=1)
def _templates_adapter() -> TypeAdapter[tuple[Template, ...]]:
    return TypeAdapter(tuple[Template, ...])


def parse_templates(raw: object, structures: Collection[str] = ()) -> dict[str, Template]:
    """``[[templates]]`` tables -> name -> Template; every name checked against the structure catalogue
    (with ``structures``, the department's own names)."""
    problems: list[Problem] = []
    templates: tuple[Template, ...] = ()
    try:
        templates = _templates_adapter().validate_python(raw)
    except ValidationError as exc:
        problems.extend(problems_from(exc, ConfigDocument, ("templates",)))
    problems.extend(template_structure_problems({"templates": raw}, structures))
    problems.extend(p for p in cross_check({"templates": raw}) if p.path.startswith("templates"))
    if problems:
        raise config_error(problems)
    return {t.name: t for t in templates}


def parse_models(data: dict[str, Any], base: Path) -> ModelsSettings:
    """The [models] table of a parsed TOML document (defaults when it has none)."""
    try:
        return TypeAdapter(ModelsSettings).validate_python(data.get("models", {}), context={"base": base})
    except ValidationError as exc:
        raise config_error(problems_from(exc, ConfigDocument, ("models",))) from exc


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the config file (``dicom-node config-schema``); TOML maps onto JSON one to one here."""
    schema = ConfigDocument.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
