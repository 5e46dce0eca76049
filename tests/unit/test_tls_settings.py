"""[node.tls] and [destinations.tls]: their files are loaded when the config is, and every problem has its
TOML path; a job's routed action carries the destination's TLS as it was routed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dicom_node.delivery import send_address
from dicom_node.errors import ConfigError
from dicom_node.routing import RoutedAction, routed_action
from dicom_node.settings import parse_settings
from tests.conftest import REPO, settings_dict
from tests.tls_certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _listener(pki: Pki, **values: Any) -> dict[str, Any]:
    return {"enabled": True, "port": 2762, "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
            **values}


def _document(tmp: Path, node_tls: dict[str, Any] | None = None,
              dest_tls: dict[str, Any] | None = None) -> dict[str, Any]:
    dest: dict[str, Any] = {"name": "TPS", "ae_title": "TPS", "host": "tps.example.org", "port": 2762}
    if dest_tls is not None:
        dest["tls"] = dest_tls
    return settings_dict(tmp, node={"tls": node_tls} if node_tls is not None else {}, destinations=[dest],
                         routing={"rules": [{"name": "r", "model": "builtin", "destinations": ["TPS"]}]})


def _problems(data: dict[str, Any], base: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, base)
    return [line.strip() for line in str(caught.value).splitlines()[1:]]


def test_a_valid_tls_config_loads_with_paths_relative_to_the_config(tmp_path: Path, pki: Pki) -> None:
    folder = pki.ca.parent
    settings = parse_settings(_document(tmp_path, _listener(pki, cert_file="server.crt", key_file="server.key",
                                                            ca_file="test-ca.crt", require_client_cert=True),
                                        {"enabled": True, "ca_file": "test-ca.crt"}), folder)
    assert settings.node.tls.cert_file == folder / "server.crt"
    assert settings.node.tls.require_client_cert and settings.node.tls.plain_listener
    assert settings.destinations["TPS"].tls.ca_file == folder / "test-ca.crt"
    assert settings.destinations["TPS"].tls.check_hostname  # on unless turned off


def test_tls_off_by_default_checks_no_file(tmp_path: Path) -> None:
    settings = parse_settings(_document(tmp_path, {"cert_file": "missing.crt"}, {"ca_file": "missing.crt"}), tmp_path)
    assert not settings.node.tls.enabled and not settings.destinations["TPS"].tls.enabled


def test_every_tls_problem_is_reported_with_its_toml_path(tmp_path: Path, pki: Pki) -> None:
    problems = _problems(_document(tmp_path, _listener(pki, key_file=str(pki.client_key), min_version="1.1"),
                                   {"enabled": True, "ca_file": "nowhere.pem", "cert_file": str(pki.client_cert)}),
                         tmp_path)
    assert problems[0].startswith("node.tls.min_version: '1.1' is not one of 1.2, 1.3"), problems
    problems = _problems(_document(tmp_path, _listener(pki, key_file=str(pki.client_key)),
                                   {"enabled": True, "ca_file": "nowhere.pem", "cert_file": str(pki.client_cert)}),
                         tmp_path)
    assert problems == [
        f"node.tls.key_file: {pki.client_key} is not the private key of server.crt "
        "(KEY_VALUES_MISMATCH)",
        f"destinations[0].tls.ca_file: cannot read {tmp_path / 'nowhere.pem'}: No such file or directory",
    ]


@pytest.mark.parametrize(("values", "problem"), [
    ({"cert_file": ""}, "node.tls.cert_file: required when TLS is enabled"),
    ({"cert_file": "ca.key"}, "node.tls.cert_file: cannot read"),
    ({"require_client_cert": True}, "node.tls.ca_file: required with require_client_cert = true"),
    ({"ca_file": "server.key"}, "node.tls.ca_file: "),
    ({"port": 11112}, "node.tls.port: is [node] port too (11112)"),
    ({"enabled": False, "plain_listener": False}, "node.tls.plain_listener: false needs enabled = true"),
], ids=["no-cert", "missing-cert", "client-cert-without-ca", "ca-not-a-certificate", "port-clash", "no-listener"])
def test_listener_problems(tmp_path: Path, pki: Pki, values: dict[str, Any], problem: str) -> None:
    data = _document(tmp_path, _listener(pki, **values))
    data["node"]["port"] = 11112
    (line,) = _problems(data, pki.ca.parent)
    assert line.startswith(problem), line


def test_a_key_with_a_passphrase_is_refused(tmp_path: Path, pki: Pki) -> None:
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(pki.server_key), "-aes256", "-passout", "pass:secret", "-out",
                    str(encrypted)], check=True, capture_output=True)
    (line,) = _problems(_document(tmp_path, _listener(pki, key_file=str(encrypted))), tmp_path)
    assert line.startswith("node.tls.key_file: ") and "passphrase" in line, line


def test_check_config_reports_the_tls_problem_and_describes_tls(tmp_path: Path, pki: Pki) -> None:
    config = (REPO / "config" / "node.example.toml").read_text()
    good = config.replace("[completion]", f'[node.tls]\nenabled = true\ncert_file = "{pki.server_cert}"\n'
                                          f'key_file = "{pki.server_key}"\nca_file = "{pki.ca}"\n'
                                          'require_client_cert = true\n\n[completion]', 1)
    (tmp_path / "good.toml").write_text(good.replace("../var", str(tmp_path)))
    bad_text = good.replace(str(pki.server_key), str(pki.client_key)).replace("../var", str(tmp_path))
    (tmp_path / "bad.toml").write_text(bad_text)
    ok, bad = (subprocess.run([sys.executable, "-m", "dicom_node.cli", "check-config", "--config",
                               str(tmp_path / name)], capture_output=True, text=True, timeout=120, cwd=REPO)
               for name in ("good.toml", "bad.toml"))
    assert ok.returncode == 0, ok.stderr
    assert ":11112 and TLS " in ok.stdout and ":2762" in ok.stdout, ok.stdout
    assert "client certificates required" in ok.stdout, ok.stdout
    assert bad.returncode == 2
    assert f"node.tls.key_file: {pki.client_key} is not the private key of server.crt" in bad.stderr, bad.stderr


def test_the_routed_action_carries_the_destinations_tls(tmp_path: Path, pki: Pki) -> None:
    settings = parse_settings(_document(tmp_path, dest_tls={
        "enabled": True, "ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key),
        "check_hostname": False, "min_version": "1.3"}), tmp_path)
    stored = routed_action(settings.rules[0], settings).to_json()
    (target,) = RoutedAction.from_json(stored).destinations
    assert target.tls is not None and target.tls.ca_file == str(pki.ca)
    # what the sender is given is what was routed, whatever the config says later
    assert send_address(target).tls == settings.destinations["TPS"].tls
    plain = parse_settings(_document(tmp_path), tmp_path)
    (plain_target,) = routed_action(plain.rules[0], plain).destinations
    assert plain_target.tls is None and not send_address(plain_target).tls.enabled
