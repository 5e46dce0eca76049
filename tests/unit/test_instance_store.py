"""InstanceStore: durable writes, folders made once, the free-space floor checked without a
statvfs per instance."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dicom_node.errors import StorageError
from dicom_node.receive import storage
from dicom_node.receive.storage import InstanceStore


def test_store_writes_parts_and_makes_the_series_folder(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "s", 1)
    target = store.path_for("1.2", "1.2.3", "1.2.3.4")
    assert store.store([b"head", memoryview(b"-body")], target) == 9
    assert target.read_bytes() == b"head-body"
    assert list(store.spool.iterdir()) == []


def test_a_removed_series_folder_is_made_again(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "s", 1)
    first = store.path_for("1.2", "1.2.3", "1.2.3.4")
    store.store([b"a"], first)
    shutil.rmtree(tmp_path / "s" / "1.2")  # e.g. retention removed the study meanwhile
    second = store.path_for("1.2", "1.2.3", "1.2.3.5")
    store.store([b"b"], second)
    assert second.read_bytes() == b"b"


def test_spool_names_are_unique(tmp_path: Path) -> None:
    names = {storage._spool_name() for _ in range(1000)}
    assert len(names) == 1000


def test_free_space_is_read_again_after_enough_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = InstanceStore(tmp_path / "s", 1)
    reads: list[int] = []
    real = store.has_room

    def counting(incoming: int = 0) -> bool:
        reads.append(incoming)
        return real(incoming)

    monkeypatch.setattr(store, "has_room", counting)
    chunk = storage.ROOM_RECHECK_BYTES // 4
    for _ in range(4):
        store.check_room(chunk)
    assert len(reads) == 2  # the first, then once the bytes since that reading reach the threshold


def test_a_full_disk_is_never_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = InstanceStore(tmp_path / "s", 1)
    store.check_room(1)
    free = {"ok": False}
    monkeypatch.setattr(store, "has_room", lambda incoming=0: free["ok"])
    monkeypatch.setattr(storage, "ROOM_RECHECK_SECONDS", 0.0)  # the next check reads the disk again
    with pytest.raises(StorageError, match="MB free"):
        store.check_room(1)
    monkeypatch.setattr(storage, "ROOM_RECHECK_SECONDS", 3600.0)
    with pytest.raises(StorageError):  # still read, not answered from an earlier good reading
        store.check_room(1)
    free["ok"] = True
    store.check_room(1)
