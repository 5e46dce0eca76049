"""Spool files made ahead of need, so creating one is not on the path of an answer.

On the ext4 disks we measured, creating a file takes 0.2-1 ms: the new inode has to join the
journal transaction that the previous instance's fsyncs are committing. A C-STORE handler pays
that before it can write a byte. Here a background thread keeps a few empty spool files open
while the association is busy on the network, and the handler takes one that is ready (or
makes its own when none is: it never waits for the thread).

The files are empty until taken and are never acknowledged: a crash leaves at most ``ahead``
empty ``.part`` files, which ``remove_stale`` removes at the next start like any other spool file
of a process that is gone (a running process's files are left alone). After
``IDLE_SECONDS`` without a take, the thread closes and removes its files and stops; the next take
starts it again.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from dicom_node.errors import StorageError
from dicom_node.private_files import PRIVATE_FILE_MODE

log = logging.getLogger(__name__)

IDLE_SECONDS = 30.0
SPOOL_SUFFIX = ".part"

# names unique per process without a random draw per instance (os.urandom is a system call)
_PREFIX = uuid.uuid4().hex[:16]
_numbers = itertools.count()


def spool_name() -> str:
    return f"{_PREFIX}-{os.getpid()}-{next(_numbers)}{SPOOL_SUFFIX}"


def _writer_alive(name: str) -> bool:
    """Whether the process named in a spool file's name still runs (it may be using the file).
    Our own pid counts only with our own prefix: in a container a restarted node is often pid 1
    again, and the files of the pid 1 before it are stale."""
    prefix, _, rest = name.partition("-")
    try:
        pid = int(rest.split("-")[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return prefix == _PREFIX
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_stale(spool: Path) -> int:
    """Remove spool files left by processes that no longer run (a crash); they were never
    acknowledged. Files of a running process, this one included, are left alone: they may be
    files made ahead or being written. Returns how many were removed."""
    removed = 0
    for path in spool.glob(f"*{SPOOL_SUFFIX}"):
        if not _writer_alive(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@dataclass(frozen=True)
class SpoolFile:
    fd: int
    path: Path

    def discard(self) -> None:
        """Close and remove: the file was never renamed into the store."""
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.path.unlink(missing_ok=True)


def create_spool_file(spool: Path) -> SpoolFile:
    path = spool / spool_name()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except OSError as exc:
        raise StorageError(f"cannot create a spool file in {spool}: {exc.strerror or exc}") from exc
    return SpoolFile(fd, path)


class SpoolAhead:
    """Keeps up to ``ahead`` empty spool files open in ``spool`` for ``take``."""

    def __init__(self, spool: Path, ahead: int = 4) -> None:
        if ahead < 1:
            raise ValueError(f"ahead must be at least 1, not {ahead}")
        self.spool = spool
        self.ahead = ahead
        self._ready: queue.Queue[SpoolFile] = queue.Queue()
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def take(self) -> SpoolFile:
        """An empty spool file open for writing: a ready one, else one made now."""
        try:
            ready = self._ready.get_nowait()
        except queue.Empty:
            ready = None
        self._wake()
        return ready if ready is not None else create_spool_file(self.spool)

    def close(self) -> None:
        """Stop making files and remove the ready ones."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wanted.set()
        if thread is not None:
            thread.join(timeout=10)
        self._drain()

    def _wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="spool-ahead", daemon=True)
                self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        while True:
            if not self._wanted.wait(IDLE_SECONDS):
                with self._lock:  # idle: stop, unless a take came in just now
                    if not self._wanted.is_set():
                        self._thread = None
                        break
            self._wanted.clear()
            if self._closed:
                break
            while self._ready.qsize() < self.ahead and not self._closed:
                try:
                    self._ready.put(create_spool_file(self.spool))
                except StorageError as exc:  # the handler will make its own and report the error
                    log.warning("could not make a spool file ahead: %s", exc)
                    break
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                self._ready.get_nowait().discard()
            except queue.Empty:
                return
