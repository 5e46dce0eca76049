"""Files and folders that only the node's own user can read.

Stored CT, spool files, output objects and the SQLite index hold patient data, so they are created
0600 (files) and 0700 (folders) whatever the process umask. The mode is given when the entry is
created (``os.open``/``mkdir`` with the mode), not fixed with a ``chmod`` afterwards: that costs no
system call on the receive path. A umask only removes permission bits, so a umask of 022 or 077
gives exactly these modes.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def make_private_dirs(path: Path) -> None:
    """``mkdir -p`` in which every folder made is 0700.

    ``Path.mkdir(parents=True, mode=...)`` gives the mode to the last folder only and makes the
    parents with the default mode; folders that already exist keep theirs."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:  # made meanwhile by another thread or process
            if not folder.is_dir():
                raise


def write_private_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: created 0600, or truncated and made 0600 if it exists (a file
    left by an older version may have a wider mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        if os.fstat(fd).st_mode & 0o777 != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
        fh.write(data)


def create_private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists (an existing file keeps its mode and content)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)
