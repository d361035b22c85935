"""The registry's transactions: each method is one short transaction, and every check that guards a write
runs inside the transaction of that write.

On PostgreSQL the rows a write depends on are locked first (``SELECT ... FOR UPDATE``): the lease row before
a version is inserted or the pointer moved, the version row before its state is merged. The pointer moves by
compare-and-swap (``UPDATE ... WHERE epoch = :expected``): of two racing promotions the second finds the
epoch changed once the first commits, and changes nothing. On SQLite a write transaction starts with ``BEGIN
IMMEDIATE``, which takes the database's one write lock at once (a deferred transaction would read, then fail
to upgrade its lock when another writer got in between), so the checks and the write see no other writer.

Time for leases comes from the database server on PostgreSQL (hosts' clocks may disagree; the server's is
the one clock they share) and from this machine on SQLite (the file is on it). A database that cannot be
reached becomes ``DatabaseUnavailableError``, its URL shown without the password.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, event, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from etl.db import display_url, is_sqlite, make_engine, upgrade
from etl.errors import (
    DatabaseUnavailableError,
    LeaseLostError,
    ModelNotFoundError,
    NotEvaluatedError,
    NotServableError,
    PromotionConflictError,
)
from etl.registry_db.tables import (
    MIGRATIONS,
    POINTER_ROW,
    evaluations,
    leases,
    pointer,
    promotions,
    reference,
    versions,
)

log = logging.getLogger(__name__)

_WRITE = "registry_write"  # the execution option that makes an SQLite transaction BEGIN IMMEDIATE


@dataclass(frozen=True)
class Pointer:
    """The served version (None before the first promotion) and the pointer's epoch."""

    version: str | None
    epoch: int
    promoted_at: float | None


@dataclass(frozen=True)
class LeaseRow:
    name: str
    token: str | None
    generation: int
    holder: str | None
    expires_at: float | None


class LeaseBusy(Exception):
    """The lease is held by ``holder`` for another ``seconds_left`` seconds (unless renewed)."""

    def __init__(self, holder: str | None, seconds_left: float) -> None:
        super().__init__(holder, seconds_left)
        self.holder = holder
        self.seconds_left = seconds_left


def gate_passed(metrics: dict[str, Any] | None) -> bool:
    """Whether an evaluation's metrics record a passed quality gate."""
    return bool(metrics and (metrics.get("quality_gate") or {}).get("passed"))


def _explicit_transactions(engine: Engine) -> None:
    """SQLite: let the transactions begin as the registry says (pysqlite's own BEGIN is deferred and comes
    only before a write, too late to hold the lock for a check that precedes it)."""

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class RegistryDB:
    """The registry's database at ``url`` (``etl.db.parse_url``). The engine is made, and the database
    migrated to the registry's head, on first use (so opening a registry never connects)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def shown(self) -> str:
        return display_url(self.url)

    @property
    def engine(self) -> Engine:
        engine = self._engine
        if engine is not None:
            return engine
        with self._lock:
            if self._engine is None:
                engine = make_engine(self.url)
                if is_sqlite(engine):
                    _explicit_transactions(engine)
                try:
                    upgrade(engine, MIGRATIONS)
                except BaseException:
                    engine.dispose()
                    raise
                self._engine = engine
            return self._engine

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    @contextlib.contextmanager
    def _unavailable_as_error(self) -> Iterator[None]:
        try:
            yield
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                kind = type(getattr(exc, "orig", None) or exc).__name__
                raise DatabaseUnavailableError(
                    f"the registry database at {self.shown} failed: {kind}"
                ) from exc
            raise

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction."""
        with self._unavailable_as_error(), self.engine.connect() as connection, connection.begin():
            yield connection

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        with self._unavailable_as_error(), self.engine.connect() as connection:
            connection.execution_options(**{_WRITE: True})
            with connection.begin():
                yield connection

    def now(self, connection: Connection) -> float:
        """Unix time by the database's clock (PostgreSQL) or this machine's (SQLite)."""
        if is_sqlite(self.engine):
            return time.time()
        return float(connection.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one())

    # -- versions ----------------------------------------------------------------------------------------
    def version_order(self) -> list[tuple[str, int]]:
        with self.read() as c:
            return [
                (r.version, r.created_ns)
                for r in c.execute(select(versions.c.version, versions.c.created_ns))
            ]

    def version(self, name: str) -> dict[str, Any] | None:
        with self.read() as c:
            row = c.execute(select(versions).where(versions.c.version == name)).mappings().first()
        return dict(row) if row else None

    def all_versions(self) -> list[dict[str, Any]]:
        """Every version row with its current evaluation's metrics (``metrics``, None when not evaluated)."""
        query = select(versions, evaluations.c.metrics, evaluations.c.report).join_from(
            versions, evaluations, evaluations.c.id == versions.c.evaluation_id, isouter=True
        )
        with self.read() as c:
            return [dict(row) for row in c.execute(query).mappings()]

    def find_fingerprint(self, fingerprint: str) -> str | None:
        query = (
            select(versions.c.version)
            .where(versions.c.fingerprint == fingerprint)
            .order_by(versions.c.created_ns.desc(), versions.c.version.desc())
            .limit(1)
        )
        with self.read() as c:
            return c.execute(query).scalar()

    def insert_version(self, row: dict[str, Any], lease: tuple[str, str] | None) -> None:
        """Publish a version (its files are in the store already), under the training lease ``(name,
        token)`` when given: refused with LeaseLostError if another trainer took the lease over."""
        with self.write() as c:
            if lease is not None:
                self.check_lease(c, *lease)
            c.execute(insert(versions).values(**row))

    def update_state(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Merge ``fields`` into the version's mutable state (one writer at a time); returns the result."""
        with self.write() as c:
            found = c.execute(
                select(versions.c.state).where(versions.c.version == name).with_for_update()
            ).first()
            if found is None:
                raise ModelNotFoundError(f"model version {name} does not exist")
            state = {**(found.state or {}), **fields}
            c.execute(update(versions).where(versions.c.version == name).values(state=state))
        return state

    # -- evaluations -------------------------------------------------------------------------------------
    def add_evaluation(self, name: str, metrics: dict[str, Any]) -> int:
        """Record an evaluation and make it the version's current one (its status follows the verdict)."""
        passed = gate_passed(metrics)
        with self.write() as c:
            exists = c.execute(
                select(versions.c.version).where(versions.c.version == name).with_for_update()
            ).first()
            if exists is None:
                raise ModelNotFoundError(f"model version {name} does not exist")
            evaluation_id = c.execute(
                insert(evaluations)
                .values(version=name, evaluated_at=self.now(c), passed=passed, metrics=metrics)
                .returning(evaluations.c.id)
            ).scalar_one()
            c.execute(
                update(versions)
                .where(versions.c.version == name)
                .values(evaluation_id=evaluation_id, status="passed" if passed else "rejected")
            )
        return int(evaluation_id)

    def evaluation(self, name: str) -> dict[str, Any] | None:
        """The version's current evaluation (``id``, ``metrics``, ``report``...), or None."""
        query = (
            select(evaluations)
            .join_from(versions, evaluations, evaluations.c.id == versions.c.evaluation_id)
            .where(versions.c.version == name)
        )
        with self.read() as c:
            row = c.execute(query).mappings().first()
        return dict(row) if row else None

    def set_report(self, evaluation_id: int, report: dict[str, Any]) -> None:
        with self.write() as c:
            c.execute(update(evaluations).where(evaluations.c.id == evaluation_id).values(report=report))

    def reports_in_use(self) -> set[str]:
        """The store prefixes of every report an evaluation refers to."""
        with self.read() as c:
            rows = c.execute(select(evaluations.c.report).where(evaluations.c.report.is_not(None)))
            return {str(r.report.get("prefix")) for r in rows if isinstance(r.report, dict)}

    # -- the pointer -------------------------------------------------------------------------------------
    def pointer(self) -> Pointer:
        with self.read() as c:
            row = c.execute(select(pointer).where(pointer.c.id == POINTER_ROW)).first()
        if row is None:  # only a database damaged by hand has no pointer row
            return Pointer(None, 0, None)
        return Pointer(row.version, int(row.epoch), row.promoted_at)

    def promote(self, name: str, expected_epoch: int, lease: tuple[str, str] | None) -> Pointer:
        """Serve ``name`` if the pointer is still at ``expected_epoch`` (and, with ``lease``, this trainer
        still holds it) and its current evaluation passed the gate. Returns the pointer it replaced.

        Raises:
            PromotionConflictError: the epoch moved (another promotion committed first).
            LeaseLostError, ModelNotFoundError, NotEvaluatedError, NotServableError.
        """
        with self.write() as c:
            if lease is not None:
                self.check_lease(c, *lease)
            before = c.execute(select(pointer).where(pointer.c.id == POINTER_ROW).with_for_update()).first()
            if before is None:
                raise PromotionConflictError("the registry has no served pointer row: run its migrations")
            # locked: a re-evaluation of this version cannot change its verdict before the switch commits
            evaluation_id = c.execute(
                select(versions.c.evaluation_id).where(versions.c.version == name).with_for_update()
            ).first()
            if evaluation_id is None:
                raise ModelNotFoundError(f"model version {name} does not exist")
            metrics = c.execute(
                select(evaluations.c.metrics).where(evaluations.c.id == evaluation_id[0])
            ).scalar()
            check_servable(name, metrics)
            now = self.now(c)
            moved = c.execute(
                update(pointer)
                .where(pointer.c.id == POINTER_ROW, pointer.c.epoch == expected_epoch)
                .values(version=name, epoch=pointer.c.epoch + 1, promoted_at=now)
            ).rowcount
            if moved != 1:
                raise PromotionConflictError(
                    f"version {name} was not promoted: the served pointer moved (epoch {before.epoch}, "
                    f"expected {expected_epoch}) because another promotion committed first; look at GET "
                    "/models (or `python -m etl models`) and promote again if it is still wanted"
                )
            c.execute(
                insert(promotions).values(
                    epoch=expected_epoch + 1,
                    version=name,
                    previous=before.version,
                    promoted_at=now,
                    lease_generation=self._generation(c, lease),
                )
            )
        return Pointer(before.version, int(before.epoch), before.promoted_at)

    def promotions(self) -> list[dict[str, Any]]:
        with self.read() as c:
            return [dict(r) for r in c.execute(select(promotions).order_by(promotions.c.epoch)).mappings()]

    def set_pointer_if_unset(self, name: str, promoted_at: float | None) -> bool:
        """Point at ``name`` (epoch 1) if nothing was ever promoted: the import of an on-disk registry."""
        with self.write() as c:
            moved = c.execute(
                update(pointer)
                .where(pointer.c.id == POINTER_ROW, pointer.c.epoch == 0)
                .values(version=name, epoch=1, promoted_at=promoted_at or self.now(c))
            ).rowcount
            if moved == 1:
                c.execute(
                    insert(promotions).values(
                        epoch=1, version=name, previous=None, promoted_at=promoted_at or self.now(c)
                    )
                )
        return moved == 1

    # -- leases ------------------------------------------------------------------------------------------
    def lease(self, name: str) -> LeaseRow:
        with self.read() as c:
            row = c.execute(select(leases).where(leases.c.name == name)).first()
        if row is None:
            return LeaseRow(name, None, 0, None, None)
        return LeaseRow(row.name, row.token, int(row.generation), row.holder, row.expires_at)

    def acquire(
        self, name: str, token: str, holder: str, seconds: float, holder_dead: Callable[[str], bool]
    ) -> int:
        """Take the lease ``name`` if it is free, expired, or held by a process known to be dead; returns its
        new generation. Raises LeaseBusy."""
        try:
            with self.write() as c:
                row = c.execute(select(leases).where(leases.c.name == name).with_for_update()).first()
                now = self.now(c)
                values = {"token": token, "holder": holder, "acquired_at": now, "expires_at": now + seconds}
                if row is None:
                    c.execute(insert(leases).values(name=name, generation=1, **values))
                    return 1
                free = row.token is None or row.expires_at is None or row.expires_at <= now
                if not free and not (row.holder and holder_dead(row.holder)):
                    raise LeaseBusy(row.holder, float(row.expires_at) - now)
                if not free:
                    log.warning("lease %s: its holder (%s) has died; taking it over", name, row.holder)
                c.execute(
                    update(leases)
                    .where(leases.c.name == name)
                    .values(generation=row.generation + 1, **values)
                )
                return int(row.generation) + 1
        except IntegrityError:  # a concurrent first acquisition inserted the row first
            raise LeaseBusy(None, seconds) from None

    def renew(self, name: str, token: str, seconds: float) -> bool:
        """Push the lease's expiry ``seconds`` ahead if this token still holds it."""
        with self.write() as c:
            now = self.now(c)
            return (
                c.execute(
                    update(leases)
                    .where(leases.c.name == name, leases.c.token == token)
                    .values(expires_at=now + seconds)
                ).rowcount
                == 1
            )

    def release(self, name: str, token: str) -> bool:
        with self.write() as c:
            return (
                c.execute(
                    update(leases)
                    .where(leases.c.name == name, leases.c.token == token)
                    .values(token=None, holder=None, expires_at=None)
                ).rowcount
                == 1
            )

    def check_lease(self, connection: Connection, name: str, token: str) -> None:
        """Inside a write transaction: raise LeaseLostError unless ``token`` still holds the lease (the row
        stays locked until the transaction ends, so no takeover can slip in before the write)."""
        row = connection.execute(select(leases).where(leases.c.name == name).with_for_update()).first()
        if row is None or row.token != token:
            raise LeaseLostError(
                f"this process's {name} lease expired and another process took it over "
                f"(now held by {row.holder if row is not None else 'nobody'}): its work is not published"
            )

    def _generation(self, connection: Connection, lease: tuple[str, str] | None) -> int | None:
        if lease is None:
            return None
        return connection.execute(select(leases.c.generation).where(leases.c.name == lease[0])).scalar()

    # -- the reference set -------------------------------------------------------------------------------
    def reference_pin(self) -> dict[str, Any] | None:
        with self.read() as c:
            row = c.execute(select(reference).order_by(reference.c.id.desc()).limit(1)).mappings().first()
        return dict(row) if row else None

    def add_reference(self, row: dict[str, Any]) -> None:
        with self.write() as c:
            c.execute(insert(reference).values(**row))


def check_servable(name: str, metrics: dict[str, Any] | None) -> None:
    """Raise NotEvaluatedError / NotServableError unless ``metrics`` record a passed gate."""
    if metrics is None:
        raise NotEvaluatedError(f"version {name} has not been evaluated: evaluate it before promoting")
    if not gate_passed(metrics):
        reasons = "; ".join((metrics.get("quality_gate") or {}).get("reasons", [])) or "no verdict"
        raise NotServableError(f"version {name} failed the quality gate and cannot be served: {reasons}")
