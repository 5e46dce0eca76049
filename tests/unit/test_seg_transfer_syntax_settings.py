"""``seg_transfer_syntaxes`` of a destination: names or UIDs, checked at load with the TOML path, and
what is proposed for each SEG type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicom_node.errors import ConfigError
from dicom_node.routing import RoutedAction
from dicom_node.settings import parse_settings
from dicom_node.settings.syntaxes import syntaxes_for
from tests.conftest import settings_dict

PACS = {"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}
RULES = {"rules": [{"name": "r", "model": "builtin", "destinations": ["PACS"], "seg_type": "LABELMAP"}]}


def _load(tmp: Path, **destination: Any) -> Any:
    return parse_settings(settings_dict(tmp, destinations=[{**PACS, **destination}], routing=RULES), tmp)


def _problems(tmp: Path, **destination: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _load(tmp, **destination)
    return [line.strip() for line in str(caught.value).splitlines()[1:]]


def test_default_is_uncompressed_only(tmp_path: Path) -> None:
    dest = _load(tmp_path).destinations["PACS"]
    assert dest.seg_transfer_syntaxes == ()
    assert syntaxes_for(dest.seg_transfer_syntaxes, "BINARY") == ["1.2.840.10008.1.2.1"]


def test_keywords_and_uids_in_any_case_become_keywords_in_order(tmp_path: Path) -> None:
    dest = _load(tmp_path, accepts_labelmap_seg=True,
                 seg_transfer_syntaxes=["1.2.840.10008.1.2.4.80", "rlelossless", "DeflatedExplicitVRLittleEndian"]
                 ).destinations["PACS"]
    assert dest.seg_transfer_syntaxes == ("JPEGLSLossless", "RLELossless", "DeflatedExplicitVRLittleEndian")
    # a BINARY SEG (1 bit a pixel) is offered deflated and uncompressed only; a LABELMAP one everything, in order
    assert syntaxes_for(dest.seg_transfer_syntaxes, "BINARY") == ["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.1"]
    assert syntaxes_for(dest.seg_transfer_syntaxes, "LABELMAP") == [
        "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.1"]


def test_the_routed_snapshot_keeps_the_syntaxes(tmp_path: Path) -> None:
    from dicom_node.routing import routed_action

    settings = _load(tmp_path, accepts_labelmap_seg=True, seg_transfer_syntaxes=["JPEG2000Lossless"])
    action = RoutedAction.from_json(routed_action(settings.rules[0], settings).to_json())
    (dest,) = action.destinations
    assert (dest.seg_type, dest.seg_transfer_syntaxes, dest.accepts_labelmap_seg) == (
        "LABELMAP", ("JPEG2000Lossless",), True)


@pytest.mark.parametrize(("destination", "message"), [
    ({"seg_transfer_syntaxes": ["JPEG"]},
     "destinations[0].seg_transfer_syntaxes[0]: 'JPEG' is not a SEG transfer syntax; one of (keyword or UID): "
     "DeflatedExplicitVRLittleEndian (1.2.840.10008.1.2.1.99), RLELossless (1.2.840.10008.1.2.5), "
     "JPEGLSLossless (1.2.840.10008.1.2.4.80), JPEG2000Lossless (1.2.840.10008.1.2.4.90), "
     "ExplicitVRLittleEndian (1.2.840.10008.1.2.1)"),
    ({"seg_transfer_syntaxes": ["1.2.840.10008.1.2.4.50"]},
     "destinations[0].seg_transfer_syntaxes[0]: '1.2.840.10008.1.2.4.50' is not a SEG transfer syntax"),
    ({"seg_transfer_syntaxes": "RLELossless"}, "destinations[0].seg_transfer_syntaxes: "),
    ({"seg_transfer_syntaxes": ["RLELossless"]},
     "destinations[0].seg_transfer_syntaxes: RLELossless compresses LABELMAP SEGs only (a BINARY SEG has 1 bit a "
     "pixel: uncompressed or DeflatedExplicitVRLittleEndian), and this destination gets BINARY SEGs "
     "(accepts_labelmap_seg = false)"),
    ({"accepts_labelmap_seg": True, "seg_transfer_syntaxes": ["RLELossless", "1.2.840.10008.1.2.5"]},
     "destinations[0].seg_transfer_syntaxes: RLELossless is listed twice (items 0 and 1)"),
    ({"seg_transfer_syntaxes": ["ExplicitVRLittleEndian", "DeflatedExplicitVRLittleEndian"]},
     "destinations[0].seg_transfer_syntaxes: ExplicitVRLittleEndian (uncompressed) is always proposed as the "
     "fallback, after the others: list it last or leave it out"),
])
def test_wrong_lists_are_refused_with_a_precise_message(tmp_path: Path, destination: dict[str, Any],
                                                        message: str) -> None:
    (problem,) = _problems(tmp_path, **destination)
    assert problem.startswith(message), problem
