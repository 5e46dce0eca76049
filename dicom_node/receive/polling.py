"""How often pynetdicom's per-association reactors poll, shared out over the open associations.

Each pynetdicom association has a DUL thread that sleeps ``_run_loop_delay`` (1 ms by default)
whenever a pass finds nothing to do. On one association every C-STORE meets that sleep twice:
before the DUL thread notices the next request's first PDU and before it sends our response.
On the 2-core VM that was about a tenth of the time per slice. pynetdicom's maintainers name this
attribute as the trade between idle CPU and latency (pydicom/pynetdicom#650). Polling faster
costs CPU and GIL time in every open association, which several associations sending at once
need for their own work. So the delay grows with the number of open associations, up to
pynetdicom's own default: the node's total polling rate stays that of a few default associations.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

PYNETDICOM_DEFAULT_DELAY = 0.001  # seconds, what pynetdicom itself uses
FASTEST_DELAY = 0.0002  # one association alone


def delay_for(open_associations: int) -> float:
    """The reactor sleep (seconds) for each of ``open_associations`` associations."""
    return min(PYNETDICOM_DEFAULT_DELAY, FASTEST_DELAY * max(1, open_associations))


def set_reactor_delay(assoc: Any, delay: float) -> bool:
    """Set the DUL reactor's idle sleep of one association; False where pynetdicom has no such knob
    (a future version may drop it: then its own default stays, and nothing else changes)."""
    dul = getattr(assoc, "dul", None)
    if dul is None or not hasattr(dul, "_run_loop_delay"):
        return False
    dul._run_loop_delay = delay
    return True


class ReactorPolling:
    """Tracks the open associations of one listener and retunes their reactors as they come and go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, Any] = {}
        self._warned = False

    def opened(self, assoc: Any) -> None:
        with self._lock:
            self._open[id(assoc)] = assoc
            self._retune()

    def closed(self, assoc: Any) -> None:
        with self._lock:
            if self._open.pop(id(assoc), None) is not None:
                self._retune()

    def associations(self) -> list[Any]:
        """The associations whose connection is open now."""
        with self._lock:
            return list(self._open.values())

    def _retune(self) -> None:
        delay = delay_for(len(self._open))
        for assoc in self._open.values():
            if not set_reactor_delay(assoc, delay) and not self._warned:
                self._warned = True
                log.info("this pynetdicom has no reactor delay to tune; its default polling is used")
