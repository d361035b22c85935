"""app/records/writer.py on SQLite: the queue is written at least every flush interval and on demand, a full
queue drops and counts, an outage keeps what was taken and writes it when the database is back (a store that
fails on purpose stands in for the outage here; tests/integration/test_prediction_record.py stops a real
PostgreSQL), a graceful stop writes everything, and old records are purged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app import metrics
from app.records.ids import IdMint, format_id
from app.records.pending import ManyPending, Pending
from app.records.store import PredictionStore
from app.records.tables import MIGRATIONS
from app.records.writer import RecordWriter
from etl.db import make_engine, sqlite_url, upgrade
from etl.errors import DatabaseUnavailableError
from tests.app.records.racing import race
from tests.waiting import wait_until

PREFIX = "abcdefabcdef0001"


class FlakyStore(PredictionStore):
    """The real store, whose inserts fail as if the database were down while ``down`` is set, or raise a
    plain error (a bug, not the database) while ``broken`` is set."""

    down = False
    broken = False

    def insert(self, pending: Any) -> int:
        if self.down:
            raise DatabaseUnavailableError("down on purpose")
        if self.broken:
            raise RuntimeError("a bug while writing")
        return super().insert(pending)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FlakyStore]:
    engine = make_engine(sqlite_url(tmp_path / "p.sqlite3"))
    upgrade(engine, MIGRATIONS)
    yield FlakyStore(engine)
    engine.dispose()


def writer_for(store: PredictionStore, **kwargs: Any) -> RecordWriter:
    options: dict[str, Any] = {
        "queueing": True,
        "flush_seconds": 0.2,
        "capacity": 1000,
        "retention_days": 0,
        "ensure_schema": lambda: True,
    }
    writer = RecordWriter(store, PREFIX, **{**options, **kwargs})
    writer.start()
    return writer


def pending(n: int, created: int | None = None) -> Pending:
    return (format_id(PREFIX, n), created or time.time_ns() // 1000, "v1", 0.3, 0.6, 1, (2,) * 9)


def dropped(reason: str) -> float:
    return metrics.PREDICTION_LOG_DROPPED.labels(reason)._value.get()


def test_writer_writes_within_flush_interval_and_marks_progress(store: FlakyStore) -> None:
    writer = writer_for(store)
    try:
        for n in range(50):
            writer.enqueue(pending(n))
        wait_until(lambda: store.count() == 50, 30, "the queue written by the timer")
        # the rows are committed before the writer marks how far it has written: wait for the mark too
        progress = wait_until(
            lambda: store.writer_progress([PREFIX]).get(PREFIX, (None, None))[1],
            30,
            "the writer registered with how far it has written",
        )
        assert progress is not None
    finally:
        writer.stop(30)


def test_writer_flush_on_demand(store: FlakyStore) -> None:
    writer = writer_for(store, flush_seconds=60)
    try:
        writer.enqueue(pending(1))
        assert writer.flush(timeout=30)
        assert store.existing([format_id(PREFIX, 1)]) == {format_id(PREFIX, 1)}
    finally:
        writer.stop(30)


def test_writer_full_queue_drops_and_counts(store: FlakyStore) -> None:
    store.down = True
    writer = writer_for(store, flush_seconds=60, capacity=10)
    before = dropped("queue_full")
    try:
        for n in range(15):
            writer.enqueue(pending(n))
        assert dropped("queue_full") - before == 5
        assert writer.pending_rows == 10
        store.down = False
        assert writer.flush(timeout=30)
        assert store.count() == 10 and writer.pending_rows == 0
    finally:
        writer.stop(30)


def test_writer_outage_keeps_taken_rows_and_resumes(store: FlakyStore) -> None:
    store.down = True
    writer = writer_for(store)
    written_before = metrics.PREDICTION_LOG_WRITTEN._value.get()
    try:
        for n in range(20):
            writer.enqueue(pending(n))
        assert writer.flush(timeout=30)  # a turn during the outage: nothing written, nothing lost
        assert store.count() == 0 and writer.pending_rows == 20
        for n in range(20, 30):
            writer.enqueue(pending(n))
        store.down = False
        wait_until(lambda: store.count() == 30, 30, "everything written once the database is back")
        assert metrics.PREDICTION_LOG_WRITTEN._value.get() - written_before == 30
        assert writer.pending_rows == 0
    finally:
        writer.stop(30)


def test_writer_stop_writes_everything_queued(store: FlakyStore) -> None:
    writer = writer_for(store, flush_seconds=60)  # the timer never fires during the test
    for n in range(500):
        writer.enqueue(pending(n))
    writer.stop(30)
    assert store.count() == 500
    before = dropped("write_error")
    writer.enqueue(pending(999))  # after the stop: answered, not recorded, counted
    assert dropped("write_error") - before == 1


def test_writer_stop_while_down_counts_the_lost_rows(store: FlakyStore) -> None:
    store.down = True
    writer = writer_for(store, flush_seconds=60)
    before = dropped("write_error")
    for n in range(7):
        writer.enqueue(pending(n))
    writer.stop(30)
    assert dropped("write_error") - before == 7 and store.count() == 0


def test_writer_refused_rows_dropped_queue_goes_on(store: FlakyStore) -> None:
    """A write the database refuses for good (here: an id already on record) is dropped and counted, and
    the rows queued after it are written."""
    store.insert([pending(1)])
    writer = writer_for(store, flush_seconds=60)
    before = dropped("write_error")
    try:
        writer.enqueue(pending(1))
        assert writer.flush(timeout=30)
        writer.enqueue(pending(2))
        assert writer.flush(timeout=30)
        assert dropped("write_error") - before == 1
        assert store.existing([format_id(PREFIX, 2)]) == {format_id(PREFIX, 2)}
    finally:
        writer.stop(30)


def test_writer_purges_records_past_retention(store: FlakyStore) -> None:
    store.insert([pending(1, created=time.time_ns() // 1000 - 3 * 86_400_000_000), pending(2)])
    writer = writer_for(store, queueing=False, retention_days=2)
    try:
        wait_until(lambda: store.count() == 1, 30, "the old record purged")
        assert store.existing([format_id(PREFIX, 2)]) == {format_id(PREFIX, 2)}
    finally:
        writer.stop(30)


def test_writer_waits_for_schema(store: FlakyStore) -> None:
    ready = {"now": False}
    writer = writer_for(store, ensure_schema=lambda: ready["now"])
    try:
        writer.enqueue(pending(1))
        assert writer.flush(timeout=30) and store.count() == 0
        ready["now"] = True
        wait_until(lambda: store.count() == 1, 30, "the held row written once the schema is there")
        assert store.writer_progress([PREFIX])[PREFIX][0] <= datetime.now(UTC)
    finally:
        writer.stop(30)


@pytest.mark.parametrize("capacity", [100_000, 300])
def test_writer_concurrent_producers_every_row_written_or_counted(store: FlakyStore, capacity: int) -> None:
    """/predict appends without a lock: with threads switching every microsecond, singles and batches from
    four threads while the writer drains, every row is on record or counted as dropped, never both, never
    lost, and the count of waiting rows returns to zero."""
    writer = writer_for(store, flush_seconds=0.01, capacity=capacity)
    before = dropped("queue_full")
    mint = IdMint(PREFIX)
    batch_rows = 5

    def produce() -> None:
        for _ in range(400):
            writer.enqueue((mint.next_id(), time.time_ns() // 1000, "v1", 0.3, 0.6, 1, (2,) * 9))
        for _ in range(40):
            first = mint.take(batch_rows)
            features = np.full((batch_rows, 9), 3.0)
            ids = IdMint.ids(PREFIX, first, batch_rows)
            writer.enqueue(
                ManyPending(
                    ids,
                    time.time_ns() // 1000,
                    "v1",
                    0.3,
                    np.full(batch_rows, 0.2),
                    np.zeros(batch_rows, dtype=bool),
                    features,
                )
            )

    race(produce, threads=4)
    try:
        assert writer.flush(timeout=60)
        sent = 4 * (400 + 40 * batch_rows)
        lost = dropped("queue_full") - before
        assert store.count() + lost == sent
        assert writer.pending_rows == 0
        if capacity >= sent:
            assert lost == 0
    finally:
        writer.stop(30)


def test_writer_unexpected_error_keeps_rows_and_counts_them_at_stop(store: FlakyStore) -> None:
    store.broken = True
    writer = writer_for(store, flush_seconds=60)
    before = dropped("write_error")
    try:
        for n in range(5):
            writer.enqueue(pending(n))
        assert writer.flush(timeout=30)  # the cycle failed: the rows stay with the thread
        assert store.count() == 0 and writer.pending_rows == 5
        store.broken = False
        assert writer.flush(timeout=30)
        assert store.count() == 5 and writer.pending_rows == 0
        store.broken = True
        for n in range(5, 8):
            writer.enqueue(pending(n))
    finally:
        writer.stop(30)  # still failing: what it held is counted as lost, not forgotten
    assert dropped("write_error") - before == 3 and writer.pending_rows == 0


def test_writer_registration_twice_is_a_no_op(store: FlakyStore) -> None:
    """A registration whose commit landed but whose answer was lost is simply made again."""
    store.register_writer(PREFIX, datetime.now(UTC))
    store.register_writer(PREFIX, datetime.now(UTC))
    assert PREFIX in store.writer_progress([PREFIX])
