"""The worker process that ``serve`` keeps alive: started again with back-off when it dies, stopped on SIGTERM.

A worker that dies at once again and again (a bad model, the database gone) is restarted after 1 s,
then 2, 4 ... at most ``MAX_BACKOFF_SECONDS``; one that ran for ``HEALTHY_SECONDS`` starts the
count again. Its running job, if any, is taken back by the new process and counted as an attempt.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
HEALTHY_SECONDS = 300.0  # a worker that lived this long was not crash-looping
STOP_GRACE_SECONDS = 60.0  # SIGTERM lets the worker finish its job; after this it is killed


class WorkerSupervisor:
    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restarts = 0  # in a row, without a healthy run between
        self.restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command)
        self.started_at = time.monotonic()
        log.info("started worker process %d", self.process.pid)

    def check(self) -> None:
        """Called every few seconds: notice a dead worker, and start it again once its back-off is over."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restart_at = None
                self.start()
            return
        if self.process is None or self.process.poll() is None:
            return
        if now - self.started_at >= HEALTHY_SECONDS:
            self.restarts = 0
        delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** self.restarts)
        self.restarts += 1
        log.error("worker process %d exited with %s; starting it again in %g s (restart %d in a row)",
                  self.process.pid, self.process.returncode, delay, self.restarts)
        self.restart_at = now + delay

    def run_until(self, stopped: threading.Event, interval: float = 0.5) -> None:
        while not stopped.wait(interval):
            self.check()

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            log.error("worker process %d did not stop within %g s; killing it", process.pid, STOP_GRACE_SECONDS)
            process.kill()
            process.wait()
