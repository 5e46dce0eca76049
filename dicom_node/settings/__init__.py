"""Typed, frozen settings loaded once from TOML and validated at start (``dicom-node check-config``).

Every problem of a config file is reported at once, each with its path in the TOML
(``routing.rules[2].match.Modalty: unknown key; ...``), in one :class:`~dicom_node.errors.ConfigError`.
``docs/configuration.md`` describes every key; ``dicom-node config-schema`` prints the JSON Schema.

- :mod:`.values`: the value types (ranges, AE titles, UIDs, paths) and the constants rules use
- :mod:`.sections`, :mod:`.rules`, :mod:`.tls`, :mod:`.notifications`: the tables;
  :mod:`.document`: the file and :class:`Settings`
- :mod:`.crosschecks`: checks across tables; :mod:`.problems`: error paths and messages
- :mod:`.loading`: TOML in, Settings or one ConfigError out
"""

from dicom_node.settings.document import ConfigDocument, Settings
from dicom_node.settings.loading import (
    config_json_schema,
    load_settings,
    parse_models,
    parse_settings,
    parse_templates,
)
from dicom_node.settings.notifications import EmailSettings, MessageTemplate, NotificationSettings, Webhook
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
from dicom_node.settings.tls import DestinationTls, ListenerTls
from dicom_node.settings.values import DEFAULT_OUTPUT_KINDS, MATCH_KEYWORDS, OUTPUT_KINDS, SEG_TYPES

__all__ = [
    "DEFAULT_OUTPUT_KINDS",
    "MATCH_KEYWORDS",
    "OUTPUT_KINDS",
    "SEG_TYPES",
    "CompletionSettings",
    "ConfigDocument",
    "Destination",
    "DestinationTls",
    "EmailSettings",
    "HousekeepingSettings",
    "IdentitySettings",
    "ListenerTls",
    "MessageTemplate",
    "ModelsSettings",
    "NodeSettings",
    "NotificationSettings",
    "RoutingRule",
    "RoutingSection",
    "Settings",
    "Template",
    "WebSettings",
    "Webhook",
    "WorkerSettings",
    "config_json_schema",
    "load_settings",
    "parse_models",
    "parse_settings",
    "parse_templates",
]
