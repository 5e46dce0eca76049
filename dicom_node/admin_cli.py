"""``dicom-node web``, ``users`` and ``config export|import``: the admin side of the command line.

    dicom-node web --config FILE                         the admin web app and API ([web] host:port)
    dicom-node users add NAME --role admin|physicist|viewer   password read from stdin
    dicom-node users list | disable NAME | enable NAME | token NAME
    dicom-node config export [--out FILE]                the live destinations, rules and templates as JSON
    dicom-node config import FILE                        replace them from a JSON export or a TOML config
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from dicom_node.db.admin_tables import Role
from dicom_node.errors import ConfigError, DicomNodeError
from dicom_node.settings import Settings

log = logging.getLogger(__name__)
AddParser = Callable[[str, str], argparse.ArgumentParser]


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def cmd_web(settings: Settings, _args: argparse.Namespace) -> int:
    import uvicorn

    from dicom_node.db.engine import open_index
    from dicom_node.web.app import create_app

    app = create_app(settings, open_index(settings.node.database_url))
    _out(f"dicom-node web admin on http://{settings.web.host}:{settings.web.port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=settings.web.host, port=settings.web.port, log_config=None, access_log=False,
                proxy_headers=False, server_header=False)
    return 0


def _read_password() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    from dicom_node.web.credentials import MIN_PASSWORD_LENGTH

    if len(password) < MIN_PASSWORD_LENGTH:
        raise DicomNodeError(f"the password (read from stdin) must have at least {MIN_PASSWORD_LENGTH} characters")
    return password


def cmd_users(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.db import audit, users
    from dicom_node.db.engine import open_index
    from dicom_node.web.credentials import hash_password, new_token, token_digest

    factory = open_index(settings.node.database_url)
    with factory.begin() as session:
        if args.action == "list":
            for user in users.list_users(session):
                _out(f"{user.name:<24} {user.role.value:<10} {'disabled' if user.disabled else 'active'}")
            return 0
        if not args.name:
            raise DicomNodeError(f"users {args.action}: a user name is needed")
        if args.action == "add":
            users.add_user(session, args.name, hash_password(_read_password()), Role(args.role))
            audit.record(session, "cli", "user-add", args.name, {"role": args.role})
            _out(f"user {args.name} added ({args.role})")
        elif args.action == "password":
            users.set_password(session, args.name, hash_password(_read_password()))
            audit.record(session, "cli", "user-password", args.name)
            _out(f"password of {args.name} changed")
        elif args.action in ("disable", "enable"):
            users.set_disabled(session, args.name, args.action == "disable")
            audit.record(session, "cli", f"user-{args.action}", args.name)
            _out(f"user {args.name} {args.action}d")
        else:  # token: printed once, stored as a digest
            user = users.existing_user(session, args.name)
            token = new_token()
            users.add_token(session, user.id, token_digest(token))
            audit.record(session, "cli", "token-add", args.name)
            _out(token)
    return 0


def _import_tables(path: Path) -> dict[str, list[dict[str, object]]]:
    """A JSON export, or the destinations, rules and templates of a TOML config file."""
    from dicom_node.live_config import tables_of
    from dicom_node.settings import load_settings

    if path.suffix == ".toml":
        return tables_of(load_settings(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with destinations, rules and templates")
    return {kind: list(data.get(key, [])) for kind, key in (("destination", "destinations"), ("rule", "rules"),
                                                            ("template", "templates"))}


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.db import audit, config_store
    from dicom_node.db.engine import open_index
    from dicom_node.live_config import problems_of, seed_from
    from dicom_node.settings.problems import config_error
    from dicom_node.web.config_edit import diff

    factory = open_index(settings.node.database_url)
    seed_from(settings, factory)
    if args.action == "export":
        with factory() as session:
            tables, version = config_store.read(session), config_store.version(session)
        text = json.dumps({"version": version, "destinations": tables["destination"], "rules": tables["rule"],
                           "templates": tables["template"]}, indent=2, sort_keys=True)
        if args.out:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        else:
            _out(text)
        return 0
    if not args.file:
        raise DicomNodeError("config import: give the file to import")
    tables = _import_tables(Path(args.file))
    problems = problems_of(tables, settings.structures)
    if problems:
        raise config_error(problems, args.file)
    with factory.begin() as session:
        before = config_store.read(session)
        version = config_store.replace(session, tables)
        changes = {kind: diff({str(e.get("name")): e for e in before[kind]}, {str(e.get("name")): e for e in entries})
                   for kind, entries in tables.items()}
        audit.record(session, "cli", "config-change", f"import {Path(args.file).name}",
                     {"version": version, "change": "imported", "diff": changes})
    _out(f"imported {args.file}: configuration version {version}")
    return 0


COMMANDS = {"web": cmd_web, "users": cmd_users, "config": cmd_config}


def add_parsers(add: AddParser) -> None:
    add("web", "run the admin web app and API ([web] in the config)")
    p = add("users", "manage the web admin's users and API tokens")
    p.add_argument("action", choices=["add", "list", "disable", "enable", "password", "token"])
    p.add_argument("name", nargs="?", default="")
    p.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value)
    p = add("config", "export or import the live destinations, routing rules and templates")
    p.add_argument("action", choices=["export", "import"])
    p.add_argument("file", nargs="?", default="", help="import: a JSON export or a TOML config file")
    p.add_argument("--out", default="", help="export: write to this file instead of stdout")
