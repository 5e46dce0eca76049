"""The login rate limit: so many failed logins per user name and per client address within a window.

Kept in the web process's memory: one web process serves the admin (a restart clears it, which
only ever lets an attacker start again from zero after the operator restarted the service).
"""

from __future__ import annotations

import threading
import time
from collections import deque


class LoginLimiter:
    def __init__(self, allowed: int, window_seconds: float) -> None:
        self.allowed = allowed
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        stamps = self._failures.setdefault(key, deque())
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        return stamps

    def blocked(self, user: str, address: str) -> bool:
        """True when the user name or the address used up its failures in the window."""
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(key, now)) >= self.allowed for key in (f"user:{user}", f"addr:{address}"))

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (f"user:{user}", f"addr:{address}"):
                self._recent(key, now).append(now)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{user}", None)

    def clear(self) -> None:
        with self._lock:
            self._failures.clear()
