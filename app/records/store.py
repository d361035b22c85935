"""The prediction record in its database: write predictions, find them, take outcome reports, read the
windows that live quality and input drift are computed over, purge old records.

Every method opens its own short transaction and turns a database that cannot be reached into
``DatabaseUnavailableError`` (503 in the API). Predictions are inserted with the driver's ``executemany`` on
plain tuples (a 10,000-row batch costs ~3 µs a row instead of SQLAlchemy's ~13), everything else goes
through SQLAlchemy Core.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from app.records.errors import OutcomeConflictError, PredictionNotFoundError
from app.records.pending import Pending
from app.records.pending import rows as pending_rows
from app.records.tables import outcomes, predictions, writers
from etl.db import is_sqlite
from etl.errors import DatabaseUnavailableError
from etl.features import FEATURE_NAMES

COLUMNS = (
    "id",
    "created_at",
    "model_version",
    "threshold",
    "probability_malignant",
    "predicted_class",
    *FEATURE_NAMES,
)
_CHUNK = 1000  # ids per IN (...) list, well under every database's limit on parameters
# rows per INSERT statement: 15 parameters each, 15,000 in all, under SQLite's 32,766 and PostgreSQL's 65,535
INSERT_ROWS = 1000
_PURGE_CHUNK = 5000  # rows per DELETE, so a purge never holds the write lock for long


@dataclass(frozen=True)
class OutcomeReport:
    prediction_id: str
    actual_class: int
    replace: bool = False


@dataclass(frozen=True)
class RecordedOutcome:
    """The outcome on record after a report: a repeated identical report gets the same one back."""

    prediction_id: str
    actual_class: int
    predicted_class: int
    model_version: str
    reported_at: datetime


def utc(value: datetime) -> datetime:
    """A datetime read back from the database as aware UTC (SQLite returns it naive)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _SqliteTime:
    """Unix microseconds -> SQLAlchemy's text format of a DateTime on SQLite (so Core reads the rows back as
    datetimes), with the part up to the second formatted once per second (``head``)."""

    def __init__(self) -> None:
        self._second = -1
        self._head = ""

    def head(self, second: int) -> str:
        """``YYYY-MM-DD HH:MM:SS.`` of the Unix second ``second``; the microseconds follow it."""
        if second != self._second:
            self._head = f"{datetime.fromtimestamp(second, UTC):%Y-%m-%d %H:%M:%S}."
            self._second = second
        return self._head

    def __call__(self, micros: int) -> str:
        second, micro = divmod(micros, 1_000_000)
        return self.head(second) + str(1_000_000 + micro)[1:]  # the six digits, zero-padded


def _aware_time(micros: int) -> datetime:
    second, micro = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(second, UTC).replace(microsecond=micro)


def is_unavailable(exc: BaseException) -> bool:
    """An error of the database's state (down, restarting, locked, full), worth trying again later, as
    opposed to one of the statement or the data."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


class PredictionStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sqlite = is_sqlite(engine)
        self._time: Callable[[int], Any] = _SqliteTime() if self._sqlite else _aware_time
        marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._values = f"({', '.join([marker] * len(COLUMNS))})"
        self._insert_sql: dict[int, str] = {}  # rows per statement -> the statement

    @contextlib.contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[Connection]:
        """A connection in a transaction, committed at the end; ``write`` takes SQLite's write lock at
        once (BEGIN IMMEDIATE), so what the transaction reads cannot change before it writes."""
        try:
            with self.engine.begin() as connection:
                if write and self._sqlite:
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                yield connection
        except SQLAlchemyError as exc:
            if is_unavailable(exc):
                reason = type(getattr(exc, "orig", None) or exc).__name__
                # no address in the message: it reaches callers of the open /predict (503 with sync)
                raise DatabaseUnavailableError(
                    f"the prediction record database is unavailable ({reason}); try again later"
                ) from exc
            raise

    # -- predictions -----------------------------------------------------------------------------
    def insert(self, pending: Sequence[Pending]) -> int:
        """Write the rows of ``pending`` in one transaction; returns how many.

        Rows go ``INSERT_ROWS`` to a statement (one multi-row VALUES, its parameters bound in C): the driver
        releases the GIL once per statement, where ``executemany`` would release and take it back for every
        row, and each take waits for the event loop to let go of it (up to 5 ms while it is busy).
        """
        if not pending:
            return 0
        written = 0
        with self._connect() as connection:
            for count, parameters in _parameter_chunks(pending, self._time):
                connection.exec_driver_sql(self._insert(count), parameters)
                written += count
        return written

    def _insert(self, count: int) -> str:
        sql = self._insert_sql.get(count)
        if sql is None:
            columns = ", ".join(COLUMNS)
            sql = f"INSERT INTO predictions ({columns}) VALUES {', '.join([self._values] * count)}"  # noqa: S608
            if len(self._insert_sql) < 64:  # full chunks, and a few sizes of last ones
                self._insert_sql[count] = sql
        return sql

    def count(self) -> int:
        with self._connect() as connection:
            return int(connection.execute(select(func.count()).select_from(predictions)).scalar_one())

    def existing(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` are on record."""
        found: set[str] = set()
        with self._connect() as connection:
            for chunk in _chunks(sorted(set(ids))):
                found.update(
                    connection.execute(select(predictions.c.id).where(predictions.c.id.in_(chunk))).scalars()
                )
        return found

    def get(self, prediction_id: str) -> dict[str, Any] | None:
        """The record of one prediction with its outcome reports (oldest first), or None."""
        with self._connect() as connection:
            row = connection.execute(
                select(predictions).where(predictions.c.id == prediction_id)
            ).one_or_none()
            if row is None:
                return None
            history = connection.execute(
                select(outcomes.c.actual_class, outcomes.c.reported_at)
                .where(outcomes.c.prediction_id == prediction_id)
                .order_by(outcomes.c.id)
            ).all()
        record = dict(row._mapping)
        record["created_at"] = utc(record["created_at"])
        if record["labelled_at"] is not None:
            record["labelled_at"] = utc(record["labelled_at"])
        record["history"] = [{"actual_class": a, "reported_at": utc(t)} for a, t in history]
        return record

    # -- outcomes --------------------------------------------------------------------------------
    def report(self, reports: Sequence[OutcomeReport], now: datetime) -> list[RecordedOutcome]:
        """Record outcome reports all or none, in one transaction.

        A report equal to the outcome on record changes nothing and gets that outcome back; one that differs
        replaces it only with ``replace`` (the old one stays in ``prediction_outcomes``). Reports of one id
        must agree (the caller checks).

        Raises:
            PredictionNotFoundError: an id is not on record (nothing is recorded).
            OutcomeConflictError: a report contradicts the outcome on record without ``replace``.
        """
        wanted = {r.prediction_id: r for r in reports}
        ids = sorted(wanted)
        with self._connect(write=True) as connection:
            current: dict[str, Any] = {}
            for chunk in _chunks(ids):
                query = (
                    select(
                        predictions.c.id,
                        predictions.c.predicted_class,
                        predictions.c.model_version,
                        predictions.c.actual_class,
                        predictions.c.labelled_at,
                    )
                    .where(predictions.c.id.in_(chunk))
                    .order_by(predictions.c.id)
                    .with_for_update()  # PostgreSQL: row locks; SQLite: BEGIN IMMEDIATE above
                )
                current.update((row.id, row) for row in connection.execute(query))
            missing = [i for i in ids if i not in current]
            if missing:
                raise PredictionNotFoundError(missing)
            conflicts = [
                i
                for i in ids
                if current[i].actual_class is not None
                and current[i].actual_class != wanted[i].actual_class
                and not wanted[i].replace
            ]
            if conflicts:
                raise OutcomeConflictError(conflicts)
            changed = [i for i in ids if current[i].actual_class != wanted[i].actual_class]
            if changed:
                connection.execute(
                    update(predictions)
                    .where(predictions.c.id == bindparam("b_id"))
                    .values(actual_class=bindparam("b_actual"), labelled_at=bindparam("b_at")),
                    [{"b_id": i, "b_actual": wanted[i].actual_class, "b_at": now} for i in changed],
                )
                connection.execute(
                    insert(outcomes),
                    [
                        {"prediction_id": i, "actual_class": wanted[i].actual_class, "reported_at": now}
                        for i in changed
                    ],
                )
        changed_set = set(changed)
        return [
            RecordedOutcome(
                prediction_id=r.prediction_id,
                actual_class=r.actual_class,
                predicted_class=current[r.prediction_id].predicted_class,
                model_version=current[r.prediction_id].model_version,
                reported_at=now
                if r.prediction_id in changed_set
                else utc(current[r.prediction_id].labelled_at),
            )
            for r in reports
        ]

    # -- the windows of the live figures ---------------------------------------------------------
    def labelled_window(self, version: str, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, actual) classes of the newest ``window`` labelled predictions of ``version``."""
        query = (
            select(predictions.c.predicted_class, predictions.c.actual_class)
            .where(predictions.c.model_version == version, predictions.c.actual_class.is_not(None))
            .order_by(predictions.c.created_at.desc(), predictions.c.id.desc())
            .limit(window)
        )
        with self._connect() as connection:
            rows = connection.execute(query).all()
        pairs = np.array(rows, dtype=np.int8).reshape(-1, 2)
        return pairs[:, 0], pairs[:, 1]

    def recent_features(self, window: int) -> np.ndarray:
        """The nine scores of the newest ``window`` predictions, as an (n, 9) array."""
        query = (
            select(*(predictions.c[name] for name in FEATURE_NAMES))
            .order_by(predictions.c.created_at.desc(), predictions.c.id.desc())
            .limit(window)
        )
        with self._connect() as connection:
            rows = connection.execute(query).all()
        return np.array(rows, dtype=np.int16).reshape(-1, len(FEATURE_NAMES))

    # -- retention -------------------------------------------------------------------------------
    def purge(self, before: datetime, limit: int) -> int:
        """Delete up to about ``limit`` predictions made before ``before`` (their outcome reports go with
        them), in transactions of a few thousand rows, and the rows of writers that stopped by then.
        Returns how many predictions: ``limit`` or more means some may be left."""
        deleted = 0
        while deleted < limit:
            with self._connect() as connection:
                oldest = select(predictions.c.id).where(predictions.c.created_at < before).limit(_PURGE_CHUNK)
                ids = list(connection.execute(oldest).scalars())
                if not ids:
                    break
                connection.execute(delete(outcomes).where(outcomes.c.prediction_id.in_(ids)))
                connection.execute(delete(predictions).where(predictions.c.id.in_(ids)))
            deleted += len(ids)
        with self._connect() as connection:
            connection.execute(
                delete(writers).where(
                    writers.c.started_at < before,
                    (writers.c.flushed_at < before) | writers.c.flushed_at.is_(None),
                )
            )
        return deleted

    # -- the writing processes -------------------------------------------------------------------
    def register_writer(self, prefix: str, started_at: datetime) -> None:
        """Enter ``prefix``; again is a no-op (a first commit may have landed and its answer been lost)."""
        try:
            with self._connect() as connection:
                connection.execute(
                    insert(writers).values(prefix=prefix, started_at=started_at, flushed_at=None)
                )
        except IntegrityError:
            pass  # the row is there already

    def mark_flushed(self, prefix: str, flushed_at: datetime) -> None:
        with self._connect() as connection:
            connection.execute(
                update(writers).where(writers.c.prefix == prefix).values(flushed_at=flushed_at)
            )

    def writer_progress(self, prefixes: Iterable[str]) -> dict[str, tuple[datetime, datetime | None]]:
        """prefix -> (when that process started, how far it has written: None before its first write);
        prefixes of no registered process are left out."""
        found: dict[str, tuple[datetime, datetime | None]] = {}
        with self._connect() as connection:
            for chunk in _chunks(sorted(set(prefixes))):
                query = select(writers.c.prefix, writers.c.started_at, writers.c.flushed_at).where(
                    writers.c.prefix.in_(chunk)
                )
                for prefix, started_at, flushed_at in connection.execute(query):
                    found[prefix] = (utc(started_at), utc(flushed_at) if flushed_at is not None else None)
        return found


def _parameter_chunks(
    pending: Sequence[Pending], when: Callable[[int], Any]
) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """(rows, their parameters in one flat tuple) for at most INSERT_ROWS rows at a time, built as they are
    written (so the GIL is let go between statements, not held while every row of a long queue is built).

    The writer holds the GIL while it builds them, and the event loop waits for it meanwhile: /predict's
    items (plain tuples) are unpacked straight into the parameters, their times formatted inline on SQLite,
    at about a third of the cost of a row tuple each through ``pending.rows``."""
    parameters: list[Any] = []
    extend = parameters.extend
    count = 0
    text_time = when if isinstance(when, _SqliteTime) else None
    for item in pending:
        if type(item) is tuple:  # OnePending (a ManyPending is a NamedTuple: a subclass)
            pid, created, version, threshold, probability, predicted, features = item
            if text_time is None:
                stamp = when(created)
            else:
                at, micro = divmod(created, 1_000_000)  # _SqliteTime's work, without a call
                stamp = text_time.head(at) + str(1_000_000 + micro)[1:]
            extend((pid, stamp, version, threshold, probability, predicted))
            extend(features)
            count += 1
            if count == INSERT_ROWS:
                yield count, tuple(parameters)
                parameters.clear()
                count = 0
            continue
        for row in pending_rows(item, when):
            extend(row)
            count += 1
            if count == INSERT_ROWS:
                yield count, tuple(parameters)
                parameters.clear()
                count = 0
    if count:
        yield count, tuple(parameters)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
