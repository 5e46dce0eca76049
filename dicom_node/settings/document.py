"""The config file as a whole (:class:`ConfigDocument`, TOML shaped) and what the node runs on (:class:`Settings`).

The document keeps the TOML's arrays (``destinations[0]``, ``routing.rules[2]``) so errors and the JSON
Schema speak the file's language; :meth:`ConfigDocument.to_settings` gives the shape callers use:
destinations and templates by name, rules in order.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass

from dicom_node.settings.rules import RoutingRule, RoutingSection, Template
from dicom_node.settings.sections import (
    CompletionSettings,
    Destination,
    HousekeepingSettings,
    IdentitySettings,
    ModelsSettings,
    NodeSettings,
    WebSettings,
    WorkerSettings,
)
from dicom_node.settings.structures import DepartmentStructure, site_catalogue
from segmenter.core.catalogue import Catalogue


@dataclass(frozen=True)
class Settings:
    """Everything the node runs on, validated; ``source`` is the config file it came from (None when built in code)."""

    node: NodeSettings
    completion: CompletionSettings
    worker: WorkerSettings
    identity: IdentitySettings
    destinations: dict[str, Destination]
    rules: tuple[RoutingRule, ...]
    source: Path | None = None
    templates: dict[str, Template] = Field(default_factory=dict)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    housekeeping: HousekeepingSettings = Field(default_factory=HousekeepingSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    structures: dict[str, DepartmentStructure] = Field(default_factory=dict)

    def catalogue(self) -> Catalogue:
        """The structure catalogue this node runs with: the built-in one and the department's [[structures]]."""
        return site_catalogue(self.structures.values())


class ConfigDocument(BaseModel):
    """The TOML config file of a dicom-node; relative paths in it are relative to its folder."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="dicom-node configuration")

    node: NodeSettings = Field(description="[node]: the listener, storage and index")
    completion: CompletionSettings = Field(default_factory=CompletionSettings,
                                           description="[completion]: when a series counts as complete")
    worker: WorkerSettings = Field(default_factory=WorkerSettings, description="[worker]: job processing")
    identity: IdentitySettings = Field(description="[identity]: who made the outputs")
    destinations: tuple[Destination, ...] = Field((), description="[[destinations]]: where outputs are sent")
    routing: RoutingSection = Field(default_factory=RoutingSection, description="[routing]: the rules")
    templates: tuple[Template, ...] = Field((), description="[[templates]]: output templates rules may name")
    models: ModelsSettings = Field(default_factory=ModelsSettings, description="[models]: learned models")
    housekeeping: HousekeepingSettings = Field(default_factory=HousekeepingSettings,
                                               description="[housekeeping]: retention and emergency clean-up")
    web: WebSettings = Field(default_factory=WebSettings, description="[web]: the admin web app and API")
    structures: tuple[DepartmentStructure, ...] = Field(
        (), description="[[structures]]: the department's own structures, added to the catalogue")

    @model_validator(mode="before")
    @classmethod
    def _outputs_beside_storage(cls, data: Any) -> Any:
        """worker.output_dir defaults to <node.storage_dir>/outputs, so moving the storage moves the outputs."""
        if not isinstance(data, dict):
            return data
        node, worker = data.get("node"), data.get("worker", {})
        if isinstance(node, dict) and isinstance(node.get("storage_dir"), str) and isinstance(worker, dict) \
                and "output_dir" not in worker:
            return {**data, "worker": {**worker, "output_dir": str(PurePath(node["storage_dir"]) / "outputs")}}
        return data

    def to_settings(self, source: Path | None = None) -> Settings:
        return Settings(
            node=self.node, completion=self.completion, worker=self.worker, identity=self.identity,
            destinations={d.name: d for d in self.destinations}, rules=self.routing.rules, source=source,
            templates={t.name: t for t in self.templates}, models=self.models, housekeeping=self.housekeeping,
            web=self.web, structures={s.name: s for s in self.structures})
