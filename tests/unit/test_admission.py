"""The connection gate's pure parts: what a connection's first bytes say, and who may connect."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from dicom_node.errors import ConfigError
from dicom_node.receive.admission import MAX_REQUEST_LENGTH, PEEK_LIMIT, AdmissionPolicy, peer_ip, request_state
from tests.conftest import make_settings


def _rq(length: int, sent: int) -> bytes:
    return (bytes([0x01, 0x00]) + struct.pack(">L", length) + b"\x00" * length)[:sent]


def test_a_request_is_handed_over_only_once_it_has_arrived_whole() -> None:
    assert request_state(b"") is None
    assert request_state(_rq(200, 3)) is None  # half a header
    assert request_state(_rq(200, 100)) is None  # half a PDU
    assert request_state(_rq(200, 206)) == "complete"
    # a request longer than a socket buffer: the peer is sending, pynetdicom reads the rest
    assert request_state(_rq(PEEK_LIMIT * 4, PEEK_LIMIT)) == "complete"


def test_what_is_not_an_association_request_is_named() -> None:
    assert request_state(b"GET / HTTP/1.1") == "not an A-ASSOCIATE-RQ (PDU type 0x47)"
    assert request_state(bytes([0x04, 0, 0, 0, 0, 4])) == "not an A-ASSOCIATE-RQ (PDU type 0x04)"
    too_long = MAX_REQUEST_LENGTH + 1
    assert request_state(_rq(too_long, 6)) == f"A-ASSOCIATE-RQ of {too_long} bytes is too long"


def test_peer_allow_list_takes_addresses_and_networks(tmp_path: Path) -> None:
    node = make_settings(tmp_path, node={"allowed_peers": ["10.0.0.5", "192.168.1.0/24", "fd00::/8"]}).node
    assert node.allowed_peers == ("10.0.0.5/32", "192.168.1.0/24", "fd00::/8")
    policy = AdmissionPolicy.from_settings(node)
    assert policy.peer_allowed("10.0.0.5") and policy.peer_allowed("192.168.1.77") and policy.peer_allowed("fd00::1")
    assert not policy.peer_allowed("10.0.0.6") and not policy.peer_allowed("not-an-address")
    assert peer_ip(("::ffff:10.0.0.5", 104, 0, 0)) == "10.0.0.5"  # a dual-stack listener's IPv4 peer
    assert AdmissionPolicy.from_settings(make_settings(tmp_path).node).peer_allowed("203.0.113.9")  # empty: anyone


def test_bad_peer_and_caps_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, node={"allowed_peers": ["10.0.0.300"], "max_connections_per_peer": 0,
                                      "negotiation_timeout_seconds": 0})
    message = str(caught.value)
    assert "node.allowed_peers[0]: '10.0.0.300' is not an IP address or a CIDR network" in message
    assert "node.max_connections_per_peer: must be >= 1, got 0" in message
    assert "node.negotiation_timeout_seconds: must be greater than 0, got 0" in message
