"""app/records/store.py on SQLite and a real PostgreSQL: predictions and outcomes round-trip, outcome reports
are all-or-none and safe under concurrency, the live windows and the purge."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from app.records.errors import OutcomeConflictError, PredictionNotFoundError
from app.records.ids import IdMint, format_id
from app.records.pending import ManyPending, OnePending
from app.records.store import OutcomeReport, PredictionStore
from app.records.tables import MIGRATIONS
from etl.db import make_engine, upgrade
from etl.features import FEATURE_NAMES

PREFIX = "00112233445566ff"


@pytest.fixture
def store(database_url: str) -> Iterator[PredictionStore]:
    engine = make_engine(database_url)
    upgrade(engine, MIGRATIONS)
    yield PredictionStore(engine)
    engine.dispose()


DAY = 86_400_000_000  # microseconds


def micros() -> int:
    return time.time_ns() // 1000


def one(
    counter: int, *, created: int, version: str = "v1", cls: int = 1, row: tuple[int, ...] = (1,) * 9
) -> OnePending:
    pid = format_id(PREFIX, counter)
    return (pid, created, version, 0.25, 0.75 if cls else 0.1, cls, row)


def test_store_single_and_batch_round_trip(store: PredictionStore) -> None:
    now = micros()
    store.insert([one(7, created=now, row=(1, 2, 3, 4, 5, 6, 7, 8, 9))])
    X = np.array([[1] * 9, [10] * 9, [3, 1, 4, 1, 5, 9, 2, 6, 5]], dtype=float)
    probs = np.array([0.01, 0.99, 0.3])
    ids = IdMint.ids(PREFIX, 100, 3)
    assert store.insert([ManyPending(ids, now + 1, "v2", 0.2, probs, probs >= 0.2, X)]) == 3
    assert store.count() == 4

    single = store.get(format_id(PREFIX, 7))
    assert single is not None
    assert single["created_at"] == datetime.fromtimestamp(now / 1e6, UTC)  # to the microsecond, UTC
    assert single["created_at"].microsecond == now % 1_000_000
    assert (single["model_version"], single["threshold"], single["predicted_class"]) == ("v1", 0.25, 1)
    assert [single[name] for name in FEATURE_NAMES] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert single["actual_class"] is None and single["history"] == []
    for i, pid in enumerate(ids):
        record = store.get(pid)
        assert record is not None and record["model_version"] == "v2"
        assert record["probability_malignant"] == probs[i]
        assert record["predicted_class"] == int(probs[i] >= 0.2)
        assert [record[name] for name in FEATURE_NAMES] == X[i].astype(int).tolist()
    assert store.get(format_id(PREFIX, 8)) is None
    assert store.existing([*ids, format_id(PREFIX, 7), format_id(PREFIX, 8)]) == {*ids, format_id(PREFIX, 7)}


def test_store_outcome_first_repeat_conflict_replace(store: PredictionStore) -> None:
    store.insert([one(1, created=micros(), cls=1)])
    pid = format_id(PREFIX, 1)
    t1 = datetime(2030, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC)
    (first,) = store.report([OutcomeReport(pid, 1)], t1)
    assert (first.actual_class, first.predicted_class, first.model_version, first.reported_at) == (
        1,
        1,
        "v1",
        t1,
    )
    (again,) = store.report([OutcomeReport(pid, 1)], t1 + timedelta(hours=1))
    assert again == first  # the same report gets the same answer, and nothing new is recorded
    with pytest.raises(OutcomeConflictError, match=pid):
        store.report([OutcomeReport(pid, 0)], t1 + timedelta(hours=2))
    t2 = t1 + timedelta(hours=3)
    (replaced,) = store.report([OutcomeReport(pid, 0, replace=True)], t2)
    assert (replaced.actual_class, replaced.reported_at) == (0, t2)
    record = store.get(pid)
    assert record is not None and (record["actual_class"], record["labelled_at"]) == (0, t2)
    assert record["history"] == [
        {"actual_class": 1, "reported_at": t1},
        {"actual_class": 0, "reported_at": t2},
    ]


def test_store_outcome_list_all_or_none(store: PredictionStore) -> None:
    store.insert([one(n, created=micros()) for n in range(3)])
    known = [format_id(PREFIX, n) for n in range(3)]
    unknown = format_id(PREFIX, 99)
    with pytest.raises(PredictionNotFoundError) as caught:
        store.report([OutcomeReport(known[0], 1), OutcomeReport(unknown, 0)], datetime.now(UTC))
    assert caught.value.ids == [unknown]
    store.report([OutcomeReport(known[1], 0)], datetime.now(UTC))
    with pytest.raises(OutcomeConflictError):
        store.report([OutcomeReport(known[0], 1), OutcomeReport(known[1], 1)], datetime.now(UTC))
    assert store.get(known[0])["actual_class"] is None  # type: ignore[index]  # neither list recorded it
    assert store.get(known[1])["actual_class"] == 0  # type: ignore[index]


def test_store_concurrent_conflicting_reports_one_wins(store: PredictionStore) -> None:
    """Eight threads report different outcomes for the same new prediction at once: exactly one is
    recorded; the others see it (the same class: its answer; the other class: 409)."""
    store.insert([one(5, created=micros())])
    pid = format_id(PREFIX, 5)
    start = threading.Barrier(8)
    results: list[object] = []

    def report(actual: int) -> None:
        start.wait()
        try:
            results.append(store.report([OutcomeReport(pid, actual)], datetime.now(UTC))[0])
        except OutcomeConflictError as exc:
            results.append(exc)

    threads = [threading.Thread(target=report, args=(n % 2,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    record = store.get(pid)
    assert record is not None and len(record["history"]) == 1
    winner = record["history"][0]
    recorded = [r for r in results if not isinstance(r, Exception)]
    conflicts = [r for r in results if isinstance(r, OutcomeConflictError)]
    assert len(results) == 8 and len(recorded) == 4 and len(conflicts) == 4
    assert {(r.actual_class, r.reported_at) for r in recorded} == {
        (winner["actual_class"], winner["reported_at"])
    }  # type: ignore[attr-defined]


def test_store_windows_newest_first_by_version(store: PredictionStore) -> None:
    base = micros() - 100_000_000
    rows = [
        one(n, created=base + n * 1000, version="v1" if n % 3 else "v0", row=(n % 10 + 1,) * 9)
        for n in range(30)
    ]
    store.insert(rows)
    labelled = [n for n in range(30) if n % 2 == 0]
    store.report([OutcomeReport(format_id(PREFIX, n), n % 4 // 2) for n in labelled], datetime.now(UTC))
    predicted, actual = store.labelled_window("v1", 5)
    newest_v1 = [n for n in reversed(labelled) if n % 3][:5]
    assert actual.tolist() == [n % 4 // 2 for n in newest_v1] and predicted.tolist() == [1] * 5
    assert len(store.labelled_window("v1", 1000)[0]) == len([n for n in labelled if n % 3])
    assert store.labelled_window("nope", 10)[0].size == 0
    recent = store.recent_features(4)
    assert recent.shape == (4, 9) and recent[:, 0].tolist() == [n % 10 + 1 for n in (29, 28, 27, 26)]


def test_store_batch_rows_ordered_within_their_shared_time(store: PredictionStore) -> None:
    X = np.tile(np.arange(1, 11, dtype=float)[:, None], (1, 9))
    ids = IdMint.ids(PREFIX, 0, 10)
    store.insert([ManyPending(ids, micros(), "v1", 0.5, np.full(10, 0.9), np.ones(10, bool), X)])
    assert store.recent_features(3)[:, 0].tolist() == [10, 9, 8]  # the batch's last rows are the newest


def test_store_purge_old_records_and_their_outcomes(store: PredictionStore) -> None:
    now = micros()
    old = [one(n, created=now - 40 * DAY) for n in range(3)]
    store.insert([*old, one(10, created=now)])
    store.report(
        [OutcomeReport(format_id(PREFIX, 0), 1), OutcomeReport(format_id(PREFIX, 10), 0)], datetime.now(UTC)
    )
    store.register_writer("aaaaaaaaaaaaaaaa", datetime.now(UTC) - timedelta(days=40))
    store.register_writer("bbbbbbbbbbbbbbbb", datetime.now(UTC))
    cutoff = datetime.now(UTC) - timedelta(days=30)
    assert store.purge(cutoff, limit=2) >= 2  # a limit stops it early; the rest goes next time
    store.purge(cutoff, limit=1000)
    assert store.existing(format_id(PREFIX, n) for n in (0, 1, 2, 10)) == {format_id(PREFIX, 10)}
    assert store.get(format_id(PREFIX, 10))["history"][0]["actual_class"] == 0  # type: ignore[index]
    assert set(store.writer_progress(["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"])) == {"bbbbbbbbbbbbbbbb"}
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM prediction_outcomes").scalar() == 1


def test_store_writer_progress(store: PredictionStore) -> None:
    started = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    store.register_writer(PREFIX, started)
    assert store.writer_progress([PREFIX, "ffffffffffffffff"]) == {PREFIX: (started, None)}
    store.mark_flushed(PREFIX, started + timedelta(seconds=1.5))
    assert store.writer_progress([PREFIX]) == {PREFIX: (started, started + timedelta(seconds=1.5))}
