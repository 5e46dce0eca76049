"""Making a folder's entries durable: the one ``fsync_dir`` the store and the output writers share.

A file renamed into a folder (or created in it) survives a crash only once the folder itself is
flushed; both the instance store (``receive.storage``) and the output writers (``outputs.common``)
rely on it. Standard library only, so the listener can import it.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries to disk. Raises OSError; callers decide whether that is fatal."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
