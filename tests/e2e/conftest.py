"""Fixtures of the end-to-end tests: a real Orthanc as the PACS."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.peers import Orthanc, start_orthanc


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc per test module, on free ports, stopped afterwards."""
    pacs = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield pacs
    pacs.stop()
