"""The dicom-node command line as a user runs it (subprocess), and the systemd units that call it."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]

from dicom_node.cli import COMMANDS
from tests.conftest import REPO


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_node.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_check_config_explains_the_example() -> None:
    proc = _cli("check-config", "--config", str(REPO / "config" / "node.example.toml"))
    assert proc.returncode == 0, proc.stderr
    assert "DICOMNODE on 127.0.0.1:11112" in proc.stdout
    assert "destination PACS: ORTHANC@127.0.0.1:4242" in proc.stdout
    assert "model builtin" in proc.stdout


def test_bad_config_names_the_key_and_exits_2(tmp_path: Path) -> None:
    text = (REPO / "config" / "node.example.toml").read_text().replace("port = 11112", "port = 99999")
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    proc = _cli("check-config", "--config", str(bad))
    assert proc.returncode == 2
    assert "node.port: must be between 1 and 65535, got 99999" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_model_in_a_rule_is_reported(tmp_path: Path) -> None:
    text = (REPO / "config" / "node.example.toml").read_text().replace('model = "builtin"', 'model = "nope"')
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    proc = _cli("check-config", "--config", str(bad))
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_check_config_reports_every_unknown_model_before_saying_anything(tmp_path: Path) -> None:
    text = (REPO / "config" / "node.example.toml").read_text().replace('model = "builtin"', 'model = "nope"')
    text += '\n[[routing.rules]]\nname = "heads"\nmodel = "absent:lungs+heart"\ndestinations = ["PACS"]\n'
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    proc = _cli("check-config", "--config", str(bad))
    assert proc.returncode == 2
    assert proc.stdout == ""  # no "OK" and no summary before the error
    assert f"invalid config {bad.resolve()} (2 errors):" in proc.stderr
    assert "routing.rules[0].model: unknown model 'nope' (rule 'ct-builtin'); known models: builtin" in proc.stderr
    assert "routing.rules[1].model: unknown model 'absent:lungs+heart' (rule 'heads')" in proc.stderr


def test_config_schema_needs_no_config_and_fits_the_example() -> None:
    proc = _cli("config-schema", env={"PATH": "/usr/bin:/bin"})  # no --config, no DICOM_NODE_CONFIG
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert {"node", "identity", "destinations", "routing", "templates", "models"} <= set(schema["properties"])
    jsonschema.validate(tomllib.loads((REPO / "config" / "node.example.toml").read_text()), schema)


def test_missing_config_is_a_clear_error() -> None:
    proc = _cli("jobs", env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "no config given" in proc.stderr


def test_echo_to_an_unreachable_destination_fails_cleanly(tmp_path: Path) -> None:
    text = (REPO / "config" / "node.example.toml").read_text().replace("port = 4242", "port = 9")
    cfg = tmp_path / "node.toml"
    cfg.write_text(text)
    proc = _cli("echo", "PACS", "--config", str(cfg))
    assert proc.returncode == 2
    assert "PACS (ORTHANC@127.0.0.1:9) cannot be reached" in proc.stderr


def test_systemd_units_run_existing_commands_as_a_dedicated_user() -> None:
    units = sorted((REPO / "systemd").glob("*.service"))
    assert {u.name for u in units} == {"dicom-node-listener.service", "dicom-node-worker.service",
                                       "dicom-node-web.service"}
    for unit in units:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(unit)
        service = parser["Service"]
        assert service["User"] == "dicomnode"
        command = service["ExecStart"].split()[1]
        assert command in COMMANDS, f"{unit.name} runs unknown command {command!r}"
        assert parser["Unit"]["PartOf"] == "dicom-node.target"
    target = (REPO / "systemd" / "dicom-node.target").read_text()
    assert "dicom-node-listener.service" in target and "dicom-node-worker.service" in target


def test_serve_on_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    """A taken port ends `serve` with one line naming the address, not a traceback."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        text = (REPO / "config" / "node.example.toml").read_text(encoding="utf-8")
        config = tmp_path / "node.toml"
        config.write_text(text.replace("port = 11112", f"port = {port}").replace("../var", str(tmp_path / "var")),
                          encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "dicom_node.cli", "serve", "--no-worker", "--config", str(config)],
                              capture_output=True, text=True, timeout=120)
    finally:
        holder.close()
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
