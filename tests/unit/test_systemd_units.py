"""The systemd units are hardened: what systemd itself rates them, and the directives they must keep.

``systemd-analyze security --offline=yes`` reads a unit file without a running systemd and rates
its exposure from 0 (locked down) to 10; ``--threshold`` (in tenths) makes it exit non-zero above
the limit. ``systemd-analyze verify`` parses the units against a scratch root that holds the
executable they name. Both must be installed (Debian package ``systemd``): missing, the tests fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
LISTENER = "dicom-node-listener.service"
WORKER = "dicom-node-worker.service"
WEB = "dicom-node-web.service"
TARGET = "dicom-node.target"
EXEC = Path("/opt/dicom-node/.venv/bin/dicom-node")

# the highest overall exposure each unit may have ("OK" is below 4.0 in systemd's scale)
MAX_EXPOSURE = {LISTENER: 2.0, WORKER: 2.5, WEB: 2.0}

REQUIRED = {
    "User": "dicomnode", "Group": "dicomnode", "UMask": "0077", "NoNewPrivileges": "yes",
    "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/dicom-node", "ProtectHome": "yes", "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes", "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "", "AmbientCapabilities": "",
}
# the worker needs the GPU's device nodes and run-time generated code (see the unit's comments); the web
# app is held to the listener's
ONLY_LISTENER = {"PrivateDevices": "yes", "MemoryDenyWriteExecute": "yes"}


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is not installed (Debian package systemd); scripts/test.sh installs it")
    return tool


def _directives(unit: Path) -> dict[str, list[str]]:
    """Every key=value of the unit's [Service] section, all values of a repeated key in order."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", [LISTENER, WORKER, WEB])
def test_exposure_is_at_most_the_stated_level(unit: str) -> None:
    limit = MAX_EXPOSURE[unit]
    proc = subprocess.run([_systemd_analyze(), "security", "--offline=yes", f"--threshold={round(limit * 10)}",
                           "--no-pager", str(UNITS / unit)], capture_output=True, text=True, timeout=60)
    # systemd reports directives it cannot parse on stderr and ignores them: none may be ignored
    assert proc.stderr.strip() == "", proc.stderr
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+) (\w+)", proc.stdout)
    assert match is not None, proc.stdout[-2000:]
    assert float(match.group(1)) <= limit, f"{unit}: exposure {match.group(1)} {match.group(2)}, limit {limit}"
    assert proc.returncode == 0, f"{unit}: systemd-analyze rates it above --threshold {limit}"


@pytest.mark.parametrize("unit", [LISTENER, WORKER, WEB])
def test_files_the_service_creates_are_its_users_only(unit: str) -> None:
    assert _directives(UNITS / unit).get("UMask") == ["0077"]
    proc = subprocess.run([_systemd_analyze(), "security", "--offline=yes", "--json=short", str(UNITS / unit)],
                          capture_output=True, text=True, timeout=60)
    umask = next(item for item in json.loads(proc.stdout) if item["name"] == "UMask=")
    assert umask["set"] and not umask["exposure"], umask  # systemd counts no exposure for it


@pytest.mark.parametrize("unit", [LISTENER, WORKER, WEB])
def test_the_hardening_directives_are_kept(unit: str) -> None:
    found = _directives(UNITS / unit)
    wanted = {**REQUIRED, **(ONLY_LISTENER if unit in (LISTENER, WEB) else {})}
    missing = {key: value for key, value in wanted.items() if value not in found.get(key, [])}
    assert missing == {}, f"{unit} lacks or changed these directives"
    assert "@system-service" in found.get("SystemCallFilter", [])


def test_the_worker_reaches_the_gpu_through_a_device_allow_list() -> None:
    found = _directives(UNITS / WORKER)
    assert "PrivateDevices" not in found  # it would hide /dev/nvidia*
    assert found.get("DevicePolicy") == ["closed"]
    allowed = {value.split()[0] for value in found.get("DeviceAllow", [])}
    assert {"char-nvidia", "char-nvidia-uvm"} <= allowed


def test_the_units_pass_systemd_verify(tmp_path: Path) -> None:
    """``verify`` wants the executables the units start to exist: they do in a scratch root, next
    to a copy of the distribution's units (the targets ours are ordered after)."""
    tool = _systemd_analyze()
    system_units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
                        None)
    assert system_units is not None, "the distribution's systemd units are missing"
    shutil.copytree(system_units, tmp_path / "usr" / "lib" / "systemd" / "system", symlinks=True)
    executable = tmp_path / EXEC.relative_to("/")
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    unit_dir = tmp_path / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    for name in (LISTENER, WORKER, WEB, TARGET):
        shutil.copy(UNITS / name, unit_dir / name)
    proc = subprocess.run([tool, "verify", f"--root={tmp_path}", "--man=no",
                           *(str(unit_dir / name) for name in (LISTENER, WORKER, WEB, TARGET))],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    # verify exits 0 even when it ignored a directive it could not parse; it says so on stderr
    assert (proc.returncode, proc.stderr.strip()) == (0, ""), proc.stderr
