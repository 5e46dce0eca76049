"""Group commit: one thread commits the index rows of all associations, several per transaction.

Each C-STORE handler hands its row over and waits for the commit that contains it, so success is
still answered only after the row is durable; with several associations sending at once, their
rows share one transaction (one fsync) instead of queueing for the database lock one by one.
The thread keeps one connection of its own; after a failed batch it opens a new one, and a batch
that failed because that connection was gone is retried once on the new one.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Connection, Dialect
from sqlalchemy.engine.interfaces import DBAPIModule
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import index
from dicom_node.db.index import StoredInstance
from dicom_node.errors import IndexError_

log = logging.getLogger(__name__)

MAX_BATCH = 64


@dataclass
class _Pending:
    item: StoredInstance
    done: threading.Event = field(default_factory=threading.Event)
    new: bool = False
    error: IndexError_ | None = None


def _connection_lost(exc: IndexError_, dialect: Dialect) -> bool:
    cause = exc.__cause__
    if not isinstance(cause, DBAPIError):
        return False
    return bool(cause.connection_invalidated or dialect.is_disconnect(cast(DBAPIModule.Error, cause.orig), None, None))


class GroupCommitter:
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._series_ids: dict[str, int] = {}
        self._connection: Connection | None = None  # the committer's own, kept between batches
        self._thread = threading.Thread(target=self._run, name="index-group-commit", daemon=True)
        self._thread.start()

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception as exc:  # a broken connection may fail to close; it is dropped anyway
                log.debug("closing the committer's connection failed: %s", exc)

    def submit(self, item: StoredInstance) -> _Pending:
        """Hand the row over without waiting, so its commit overlaps with writing the file."""
        pending = _Pending(item)
        self._queue.put(pending)
        return pending

    @staticmethod
    def wait(pending: _Pending, timeout: float = 120.0) -> bool:
        """Block until a submitted row is committed; True if new, False if a duplicate. Raises IndexError_."""
        if not pending.done.wait(timeout):
            raise IndexError_(f"index commit did not finish within {timeout:g} s")
        if pending.error is not None:
            raise pending.error
        return pending.new

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._drop_connection()

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            self._commit(batch)

    def _record(self, items: list[StoredInstance]) -> list[bool]:
        """One batch on the kept connection. When that connection turns out to be gone (PostgreSQL
        restarted, an idle timeout overnight), the batch runs once more on a fresh one: retrying is
        safe because the INSERT ignores rows already there."""
        try:
            return self._record_once(items)
        except IndexError_ as exc:
            if not _connection_lost(exc, self.factory.kw["bind"].dialect):
                raise
            log.warning("the index connection was lost; the batch is retried on a new one")
            return self._record_once(items)

    def _record_once(self, items: list[StoredInstance]) -> list[bool]:
        if self._connection is None:
            try:
                self._connection = self.factory.kw["bind"].connect()
            except SQLAlchemyError as exc:
                raise IndexError_(f"cannot connect to the index: {exc}") from exc
        try:
            return index.record_batch(self.factory, items, self._series_ids, self._connection)
        except IndexError_:
            self._drop_connection()
            raise

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            outcome = self._record([p.item for p in batch])
            for pending, new in zip(batch, outcome, strict=True):  # one outcome per row, or none is trusted
                pending.new = new
        except IndexError_ as exc:
            for pending in batch:
                pending.error = exc
        except Exception as exc:  # never let the committer thread die: every waiter gets an answer
            log.exception("unexpected failure in the index committer")
            self._drop_connection()
            for pending in batch:
                pending.error = IndexError_(f"{type(exc).__name__}: {exc}")
        finally:
            for pending in batch:
                pending.done.set()
