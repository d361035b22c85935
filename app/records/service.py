"""The prediction record of one service process: its database, its ids, the PREDICTION_LOG mode, the
writer, lookups that know about queued records, and the live figures.

- ``async`` (default): an answer's record is queued and written by the writer thread within
  PREDICTION_LOG_FLUSH_SECONDS (app/records/writer.py); the answer never waits for the database.
- ``sync``: the record is committed (SQLite: flushed to disk) before the answer is sent; no database, no
  answer (503).
- ``off``: nothing is recorded and answers carry no ``prediction_id``; records made earlier can still be
  looked up, labelled and purged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from app.records.database import database_url
from app.records.errors import PredictionNotFoundError
from app.records.ids import IdMint, prefix_of
from app.records.live import LiveFigures, LiveMonitor, LiveSettings
from app.records.pending import Pending
from app.records.store import PredictionStore
from app.records.tables import MIGRATIONS
from app.records.writer import RecordWriter
from etl.db import display_url, make_engine, upgrade
from etl.errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from app.settings import ServiceSettings

log = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.05


class PredictionRecords:
    def __init__(self, settings: ServiceSettings) -> None:
        self.mode = settings.prediction_log
        self.enabled = self.mode != "off"
        self.engine = make_engine(database_url(settings), durable=self.mode == "sync")
        self.store = PredictionStore(self.engine)
        self.mint = IdMint()
        self.flush_seconds = settings.prediction_log_flush_seconds
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._schema_warned = False
        self.writer = RecordWriter(
            self.store,
            self.mint.prefix,
            queueing=self.mode == "async",
            flush_seconds=self.flush_seconds,
            capacity=settings.prediction_log_queue_rows,
            retention_days=settings.prediction_retention_days,
            ensure_schema=self.ensure_schema,
        )
        self.live = LiveMonitor(
            self.store,
            LiveSettings(
                window=settings.live_window,
                min_labelled=settings.live_min_labelled,
                drift_window=settings.drift_window,
                drift_min_predictions=settings.drift_min_predictions,
                cache_seconds=settings.live_cache_seconds,
            ),
        )

    # -- life cycle ------------------------------------------------------------------------------
    def ensure_schema(self) -> bool:
        """Migrate once (under the migration lock); False while the database cannot be reached."""
        if self._schema_ready:
            return True
        with self._schema_lock:
            if not self._schema_ready:
                try:
                    upgrade(self.engine, MIGRATIONS)
                except DatabaseUnavailableError as exc:
                    if not self._schema_warned:
                        log.warning("%s; the prediction record waits for it", exc)
                        self._schema_warned = True
                    return False
                self._schema_ready = True
        return True

    def start(self) -> None:
        """Migrate if needed and start the writer thread (the service's start-up)."""
        if self.ensure_schema():
            self.writer.register()
            log.info(
                "prediction record: PREDICTION_LOG=%s, database %s", self.mode, display_url(self.engine.url)
            )
        self.writer.start()

    def stop(self) -> None:
        """Write what is queued and close the database (a graceful shutdown)."""
        self.writer.stop(STOP_TIMEOUT_SECONDS)
        self.engine.dispose()

    # -- recording -------------------------------------------------------------------------------
    async def save(self, pending: Pending | None) -> None:
        """Record an answer before it is sent (event loop): queue it (async) or commit it in a thread
        (sync). Raises DatabaseUnavailableError in sync mode only."""
        if pending is None:
            return
        if self.mode == "async":
            self.writer.enqueue(pending)
        else:
            await asyncio.to_thread(self.commit, pending)

    def save_blocking(self, pending: Pending | None) -> None:
        """``save`` for a caller on a worker thread."""
        if pending is None:
            return
        if self.mode == "async":
            self.writer.enqueue(pending)
        else:
            self.commit(pending)

    def commit(self, pending: Pending) -> None:
        if not self.ensure_schema():
            raise DatabaseUnavailableError("the prediction record database is unavailable")
        self.store.insert([pending])

    # -- lookups ---------------------------------------------------------------------------------
    def require(self, ids: Sequence[str], asked_at: datetime) -> None:
        """Pass when every id is on record. An id not written yet but possibly queued (by this process,
        or by another one whose writer has not written past ``asked_at``) is waited for, at most about two
        flush intervals.

        Raises:
            PredictionNotFoundError: ids that are not on record after that.
            DatabaseUnavailableError: the database cannot be read.
        """
        if not self.ensure_schema():
            raise DatabaseUnavailableError("the prediction record database is unavailable")
        missing = set(ids) - self.store.existing(ids)
        if not missing:
            return
        prefixes = {prefix_of(i) for i in missing}
        if self.mint.prefix in prefixes and self.mode == "async":
            self.writer.flush(timeout=2 * self.flush_seconds + 5)
        self._wait_for_writers(prefixes - {self.mint.prefix}, asked_at)
        missing -= self.store.existing(missing)
        if missing:
            raise PredictionNotFoundError(sorted(missing))

    def _wait_for_writers(self, prefixes: Iterable[str], asked_at: datetime) -> None:
        """Until every live writer among ``prefixes`` has written what it queued before ``asked_at``."""
        prefixes = set(prefixes)
        if not prefixes:
            return
        stale = timedelta(seconds=3 * self.flush_seconds + 5)  # a writer this quiet is gone
        deadline = time.monotonic() + 2 * self.flush_seconds + 1
        while True:
            progress = self.store.writer_progress(prefixes)
            waiting = [
                prefix
                for prefix, (started_at, flushed_at) in progress.items()
                if (flushed_at is None or flushed_at < asked_at)
                and max(started_at, flushed_at or started_at) > asked_at - stale
            ]
            if not waiting or time.monotonic() > deadline:
                return
            time.sleep(POLL_SECONDS)

    def get(self, prediction_id: str) -> dict[str, Any]:
        """The record of ``prediction_id`` with its outcome history (waiting for it as ``require``)."""
        self.require([prediction_id], datetime.now(UTC))
        record = self.store.get(prediction_id)
        if record is None:  # purged in between
            raise PredictionNotFoundError([prediction_id])
        return record

    # -- live figures ----------------------------------------------------------------------------
    def figures(self, version: str, reference: dict[str, Any] | None) -> LiveFigures | None:
        if not self.ensure_schema():
            return None
        return self.live.figures(version, reference)
