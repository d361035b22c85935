"""The background writer of PREDICTION_LOG=async: a bounded in-memory queue and one thread that writes it.

The event loop only appends to a ``deque`` (a batch is one item, its arrays as they are); it never waits for
the database, and a /predict takes no lock: a deque's ``append`` and ``len`` are atomic under CPython's GIL,
and the rows beyond one per queued item (a batch's, and those the thread holds) are counted in ``_extra``,
which only changes under the lock. The thread wakes every ``flush_seconds`` (sooner once half the queue is
full, or when a lookup asks for a flush), takes everything queued and writes it in one transaction. While the
database is down the taken items stay with the thread and are written when it is back; meanwhile new
predictions keep queueing until ``capacity`` rows wait, and past that each one is answered but not recorded,
and counted (``bcd_prediction_log_dropped_total{reason="queue_full"}``). A write the database refuses for
good (not an outage) is dropped and counted too (``reason="write_error"``), so one bad row never blocks the
queue.

Guarantee: a prediction is written within ``flush_seconds`` plus the time of the write (milliseconds) of
being answered, as long as the database is up; ``stop`` (a graceful shutdown, once the server has stopped
answering) writes everything queued. So a ``kill -9`` loses at most the predictions of the last
``flush_seconds``.

After each write the thread records in ``prediction_writers`` the moment it took its items: everything this
process answered before then is on record. A lookup of an id that is not found asks that process's row
whether the id could still be in its queue (app/records/service.py).

The same thread purges records older than ``retention_days`` (in every mode).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import repeat, starmap

from sqlalchemy.exc import SQLAlchemyError

from app import metrics
from app.records.pending import Pending, size
from app.records.store import PredictionStore
from etl.errors import DatabaseUnavailableError

log = logging.getLogger(__name__)

PURGE_INTERVAL_SECONDS = 3600.0
PURGE_RETRY_SECONDS = 60.0
PURGE_ROWS_PER_CYCLE = 50_000  # a long backlog is purged over several cycles, never delaying a flush long
WRITE_CHUNK_ROWS = 20_000  # rows per transaction when a backlog is written


class RecordWriter:
    """Queue and writer thread of one process (``start``, ``enqueue``, ``flush``, ``stop``)."""

    def __init__(
        self,
        store: PredictionStore,
        prefix: str,
        *,
        queueing: bool,
        flush_seconds: float,
        capacity: int,
        retention_days: int,
        ensure_schema: Callable[[], bool],
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.queueing = queueing  # PREDICTION_LOG=async; otherwise the thread only purges
        self.flush_seconds = flush_seconds
        self.capacity = capacity
        self.retention_days = retention_days
        self._ensure_schema = ensure_schema
        self._lock = threading.Lock()  # for a batch, the thread and the control calls; /predict takes none
        self._cond = threading.Condition(self._lock)
        self._queue: deque[Pending] = deque()
        # rows waiting = len(self._queue) + self._extra: the rows of queued batches beyond one per item, plus
        # the rows the thread has taken and not written yet (changed under the lock only)
        self._extra = 0
        self._wake_rows = max(1, capacity // 2)
        self._flush_asked = False
        self._stopping = False
        self._accepting = True
        self._drains = 0  # cycles that have taken the queue
        self._done = 0  # cycles finished (written, or kept for a retry)
        self._held: list[Pending] = []  # taken but not written yet: the database was down
        self._registered = False
        self._failing_since: float | None = None
        self._next_purge = time.monotonic()
        self._thread: threading.Thread | None = None

    # -- the hot path ----------------------------------------------------------------------------
    def enqueue(self, item: Pending) -> None:
        """Queue ``item`` for writing; when the queue is full it is counted as dropped instead. The caller
        that finds half the queue waiting wakes the writer and yields the GIL, so the writer gets its turn
        before the queue fills (a busy event loop would otherwise hand it over only every 5 ms)."""
        queue = self._queue
        if type(item) is tuple:  # /predict's plain tuple, the hot path: no lock (see the module docstring)
            if not (self._accepting and len(queue) + self._extra < self.capacity):
                self._refuse(1)
                return
            queue.append(item)
            if len(queue) + self._extra < self._wake_rows or self._flush_asked:
                return
        else:
            n = size(item)
            with self._lock:
                if not (self._accepting and len(queue) + self._extra + n <= self.capacity):
                    accepted = False
                else:
                    accepted = True
                    self._extra += n - 1  # before the append: a concurrent reader over-counts, never under
                    queue.append(item)
            if not accepted:
                self._refuse(n)
                return
            if len(queue) + self._extra < self._wake_rows or self._flush_asked:
                return
        with self._cond:
            self._flush_asked = True
            self._cond.notify()
        time.sleep(0)

    def _refuse(self, n: int) -> None:
        reason = "queue_full" if self._accepting else "write_error"
        metrics.PREDICTION_LOG_DROPPED.labels(reason).inc(n)

    # -- control ---------------------------------------------------------------------------------
    def register(self) -> None:
        """Enter this process in ``prediction_writers`` (before its first answer, so another process that
        is asked for one of its ids knows to wait for it); the thread retries if the database is down."""
        if not self.queueing or self._registered:
            return
        try:
            self.store.register_writer(self.prefix, datetime.now(UTC))
        except DatabaseUnavailableError:
            return
        self._registered = True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-record-writer", daemon=True)
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Write everything queued before this call; True when that is done within ``timeout`` seconds."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                return False
            target = self._drains + 1
            self._flush_asked = True
            self._cond.notify()
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def stop(self, timeout: float) -> None:
        """Stop accepting, write what is queued (a graceful shutdown), and end the thread."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the prediction record writer did not finish within %.0f s", timeout)

    @property
    def pending_rows(self) -> int:
        """Rows queued or held by the thread."""
        return len(self._queue) + self._extra

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        next_drain = time.monotonic() + self.flush_seconds
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._flush_asked or self._stopping,
                    timeout=max(0.0, next_drain - time.monotonic()),
                )
                next_drain = time.monotonic() + self.flush_seconds
                stopping = self._stopping
                self._flush_asked = False
                taken_at = datetime.now(UTC)
                items = self._take()
                self._drains += 1
                cycle = self._drains
                metrics.PREDICTION_LOG_QUEUE.set(self.pending_rows)
            try:
                self._cycle(items, taken_at, final=stopping)
            except Exception:  # the writer must never die; the rows stay held for the next cycle
                log.exception("prediction record writer failed; will retry")
                if stopping:
                    self._give_up()
            with self._cond:
                self._done = cycle
                self._cond.notify_all()
            if stopping and not self._queue:  # else: a /predict that passed its check as the stop began
                return

    def _take(self) -> list[Pending]:
        """Everything queued (under the lock): its rows move from the queue's count to the thread's."""
        queue = self._queue
        n = len(queue)
        self._extra += n  # first: a /predict checking meanwhile over-counts, never under
        return list(starmap(queue.popleft, repeat((), n)))  # one C loop: the over-count lasts no longer

    def _cycle(self, items: list[Pending], taken_at: datetime, *, final: bool) -> None:
        self._held.extend(items)  # from here until written, or counted as dropped (whatever fails below)
        if not self._ensure_schema():
            self._outage("the schema could not be checked or migrated")
            if final:
                self._give_up()
            return
        if self.queueing:
            self._write(taken_at, final=final)
        if not final:
            self._purge_if_due()

    def _write(self, taken_at: datetime, *, final: bool) -> None:
        batch, self._held = self._held, []
        done = 0  # items of batch written (or dropped for good)
        try:
            if not self._registered:
                self.store.register_writer(self.prefix, taken_at)
                self._registered = True
            while done < len(batch):
                end, rows = done, 0
                while end < len(batch) and (end == done or rows + size(batch[end]) <= WRITE_CHUNK_ROWS):
                    rows += size(batch[end])
                    end += 1
                try:
                    written = self.store.insert(batch[done:end])
                except DatabaseUnavailableError:
                    raise
                except SQLAlchemyError as exc:  # refused for good: not retried, so it cannot block the queue
                    reason = getattr(exc, "orig", None) or exc  # the driver's words, not the rows' values
                    log.error(
                        "prediction record: %d rows refused by the database, dropped: %s: %s",
                        rows,
                        type(reason).__name__,
                        str(reason).splitlines()[0][:200],
                    )
                    metrics.PREDICTION_LOG_DROPPED.labels("write_error").inc(rows)
                    written = 0
                done = end
                self._release(rows)
                metrics.PREDICTION_LOG_WRITTEN.inc(written)
            self.store.mark_flushed(self.prefix, taken_at)
            log.debug("prediction record: %d queued items written (up to %s)", len(batch), taken_at)
        except DatabaseUnavailableError as exc:
            self._held = batch[done:]
            self._outage(str(exc))
            if final:
                self._give_up()
            return
        except BaseException:  # anything else: the rows not written stay held (and _run logs it)
            self._held = batch[done:]
            raise
        if self._failing_since is not None:
            log.warning(
                "prediction record: the database is back after %.1f s; the queue is written again",
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None

    def _release(self, rows: int) -> None:
        with self._cond:
            self._extra -= rows

    def _outage(self, why: str) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning(
                "prediction record: cannot write (%s); up to %d rows wait in memory, then new predictions "
                "are answered without a record and counted as dropped",
                why,
                self.capacity,
            )

    def _give_up(self) -> None:
        rows = sum(map(size, self._held))
        if rows:
            log.error("prediction record: %d queued rows are lost: the database is down at shutdown", rows)
            metrics.PREDICTION_LOG_DROPPED.labels("write_error").inc(rows)
            self._release(rows)
        self._held = []

    def _purge_if_due(self) -> None:
        if not self.retention_days or time.monotonic() < self._next_purge:
            return
        before = datetime.now(UTC) - timedelta(days=self.retention_days)
        try:
            deleted = self.store.purge(before, PURGE_ROWS_PER_CYCLE)
        except DatabaseUnavailableError:
            self._next_purge = time.monotonic() + PURGE_RETRY_SECONDS
            return
        more = deleted >= PURGE_ROWS_PER_CYCLE
        self._next_purge = time.monotonic() + (0.0 if more else PURGE_INTERVAL_SECONDS)
        if deleted:
            log.info(
                "prediction record: purged %d predictions older than %d days", deleted, self.retention_days
            )
