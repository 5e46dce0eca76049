"""InstanceStore: durable writes, folders made once, the free-space floor checked without a
statvfs per instance."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dicom_node.errors import StorageError
from dicom_node.receive import spool, storage
from dicom_node.receive.storage import InstanceStore


def test_store_writes_parts_and_makes_the_series_folder(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "s", 1)
    target = store.path_for("1.2", "1.2.3", "1.2.3.4")
    assert store.store([b"head", memoryview(b"-body")], target) == 9
    assert target.read_bytes() == b"head-body"
    # only empty files made ahead are left in the spool, and closing the store removes them
    assert all(p.stat().st_size == 0 for p in store.spool.iterdir())
    store.close()
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
    names = {spool.spool_name() for _ in range(1000)}
    assert len(names) == 1000


def test_spool_files_are_made_ahead_and_removed_when_idle_or_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "IDLE_SECONDS", 0.3)
    ahead = spool.SpoolAhead(tmp_path, ahead=3)
    first = ahead.take()  # nothing ready yet: made on the spot, and the thread starts filling
    first.discard()
    deadline = time.monotonic() + 5
    while len(list(tmp_path.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    made = sorted(tmp_path.iterdir())
    assert len(made) == 3
    taken = ahead.take()
    assert taken.path in made  # a ready one, not a new one
    os.write(taken.fd, b"x")
    taken.discard()
    while any(tmp_path.iterdir()) and time.monotonic() < deadline + 5:  # idle: the thread cleans up
        time.sleep(0.05)
    assert list(tmp_path.iterdir()) == []
    again = ahead.take()  # and starts again on the next take
    again.discard()
    ahead.close()
    assert list(tmp_path.iterdir()) == []
    late = ahead.take()  # after close, takes still work; nothing is made ahead any more
    late.discard()
    time.sleep(0.1)
    assert list(tmp_path.iterdir()) == []


def test_a_spool_folder_that_is_gone_is_a_storage_error(tmp_path: Path) -> None:
    ahead = spool.SpoolAhead(tmp_path / "missing")
    with pytest.raises(StorageError, match="cannot create a spool file in"):
        ahead.take()
    ahead.close()


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


def test_only_spool_files_of_stopped_processes_are_removed_at_start(tmp_path: Path) -> None:
    first = InstanceStore(tmp_path / "s", 1)
    target = first.path_for("1.2", "1.2.3", "1.2.3.4")
    first.store([b"a"], target)  # the first store now has files made ahead
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left_by_crash = first.spool / f"0123456789abcdef-{int(dead.stdout)}-7.part"
    left_by_crash.write_bytes(b"half an instance")
    odd = first.spool / "not-a-pid.part"
    odd.write_bytes(b"")
    # a node restarted in a container is often pid 1 again: same pid, another process's prefix
    same_pid_before_restart = first.spool / f"fedcba9876543210-{os.getpid()}-3.part"
    same_pid_before_restart.write_bytes(b"")
    second = InstanceStore(tmp_path / "s", 1)  # e.g. a listener restarted within the same process
    assert not left_by_crash.exists() and not odd.exists() and not same_pid_before_restart.exists()
    # the running store's files survive, so it keeps storing
    again = first.path_for("1.2", "1.2.3", "1.2.3.5")
    first.store([b"b"], again)
    assert again.read_bytes() == b"b"
    first.close()
    second.close()
