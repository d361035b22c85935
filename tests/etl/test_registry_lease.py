"""The registry's leases and the fencing of writes by their tokens (etl/registry_db/lease.py), on SQLite and
on a real PostgreSQL: one holder at a time, renewed while held, expiring when not, taken over at once from a
dead process of this machine, and a holder that was taken over can publish and promote nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from etl.errors import LeaseLostError, TrainingInProgressError
from etl.registry import Lease, Registry, new_version_name
from etl.registry_db.store import LeaseBusy
from tests.conftest import ROOT
from tests.pipeline_support import fitted_version_files
from tests.registry_support import sql
from tests.waiting import wait_until

KEY = b"k" * 32
SECONDS = 2.0  # the shortest lease TRAINING_LEASE_SECONDS allows
# a lease only a test would take: for a holder that stops renewing at once, or one whose loss the test awaits
# (nothing the test does must happen before it expires, so a slow machine only makes the wait longer)
BRIEF = 0.3


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], pd.DataFrame]:
    return fitted_version_files(tmp_path_factory.mktemp("data"))


def _registry(root: Path, url: str, seconds: float = SECONDS) -> Registry:
    return Registry(root, KEY, registry_url=url, artifact_url=str(root / "models"), lease_seconds=seconds)


def _freeze(lease: Lease) -> None:
    """The holder stops renewing without letting go: a long pause, SIGSTOP, a partition (its heartbeat
    thread ends; the row still names it)."""
    lease._stop.set()
    lease._thread.join()


def _take_over(registry: Registry, timeout: float = 60) -> Lease:
    """The lease, as soon as it can be had (after the current holder's expiry)."""

    def attempt() -> Lease | None:
        try:
            return Lease.acquire(registry.db, "training", registry.lease_seconds)
        except LeaseBusy:
            return None

    lease = wait_until(attempt, timeout, "the training lease to expire and be taken over", interval=0.1)
    assert lease is not None
    return lease


def _row(url: str) -> dict[str, object]:
    (row,) = sql(url, "SELECT * FROM registry_leases WHERE name = 'training'")
    return row


def test_lease_one_holder_then_the_next(tmp_path: Path, database_url: str) -> None:
    registry = _registry(tmp_path, database_url)
    with registry.training_lock() as first:
        busy = pytest.raises(TrainingInProgressError, match=rf"already running \(pid {os.getpid()} on host")
        with busy, _registry(tmp_path, database_url).training_lock():
            pass
        assert _row(database_url)["token"] == first.token
    assert _row(database_url)["token"] is None  # released
    with registry.training_lock() as second:
        assert second.generation == first.generation + 1 and second.token != first.token


def test_lease_heartbeat_keeps_it_past_its_duration(tmp_path: Path, database_url: str) -> None:
    registry = _registry(tmp_path, database_url)
    with registry.training_lock():
        first_expiry = float(_row(database_url)["expires_at"])  # type: ignore[arg-type]
        # renewed, and held beyond the moment it would have expired without the heartbeat
        wait_until(
            lambda: float(_row(database_url)["expires_at"]) > first_expiry + SECONDS,  # type: ignore[arg-type]
            60,
            "two renewals of the lease",
        )
        with pytest.raises(TrainingInProgressError), _registry(tmp_path, database_url).training_lock():
            pass


def test_lease_expired_holder_can_publish_and_promote_nothing(tmp_path: Path, database_url: str, fitted):
    """The holder freezes past its expiry, another trainer takes over and publishes: the stale holder's
    registration and promotion are refused inside their own transactions, and leave nothing behind."""
    registry = _registry(tmp_path, database_url)
    stale = Lease.acquire(registry.db, "training", BRIEF)
    _freeze(stale)
    with _take_over(registry) as fresh:
        assert fresh.generation == stale.generation + 1
        served = new_version_name("fresh")
        registry.create_version(served, fitted[0], {"threshold": 0.5}, lease=fresh)
        registry.write_metrics(served, {"quality_gate": {"passed": True, "reasons": []}})
        registry.promote(served, lease=fresh)
        epoch = registry.pointer().epoch

        orphan = new_version_name("stale")
        with pytest.raises(LeaseLostError, match="took it over"):
            registry.create_version(orphan, fitted[0], {"threshold": 0.5}, lease=stale)
        assert registry.versions() == [served] and not registry.store.list(orphan)  # its files are gone
        with pytest.raises(LeaseLostError, match="took it over"):
            registry.promote(served, lease=stale)
    assert registry.pointer().epoch == epoch and len(registry.promotions()) == 1


def test_lease_renewal_after_a_takeover_marks_it_lost(tmp_path: Path, database_url: str, fitted) -> None:
    registry = _registry(tmp_path, database_url, seconds=BRIEF)  # renewed every 0.1 s
    with registry.training_lock() as lease:
        # another holder took the row over (as after an expiry the heartbeat could not prevent)
        sql(database_url, "UPDATE registry_leases SET token = 'another', generation = generation + 1")
        wait_until(lease.lost.is_set, 60, "the heartbeat to find the lease taken over")
        version = new_version_name("lost")
        with pytest.raises(LeaseLostError):
            registry.create_version(version, fitted[0], {"threshold": 0.5}, lease=lease)
    assert registry.versions() == []


HOLD = """
import sys, time
from pathlib import Path
from etl.registry import Registry
registry = Registry(Path(sys.argv[1]), registry_url=sys.argv[2], lease_seconds=float(sys.argv[3]))
with registry.training_lock():
    Path(sys.argv[4]).touch()
    time.sleep(600)
"""


def _killed_holder(tmp_path: Path, url: str, seconds: float) -> None:
    """A process that takes the training lease, then is killed with SIGKILL while holding it."""
    marker = tmp_path / "held"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "holder"), url, str(seconds), str(marker)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_until(lambda: marker.exists() or proc.poll() is not None, 60, "the holder to take the lease")
        assert proc.poll() is None, "the holder exited"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_lease_of_a_killed_local_process_is_taken_over_at_once(tmp_path: Path, database_url: str) -> None:
    _killed_holder(tmp_path, database_url, seconds=600)  # it would hold for ten minutes
    registry = _registry(tmp_path, database_url, seconds=600)
    with registry.training_lock() as lease:  # at once: its holder is a dead process of this machine
        assert lease.generation == 2


def test_lease_of_a_killed_process_elsewhere_waits_for_its_expiry(tmp_path: Path, database_url: str) -> None:
    _killed_holder(tmp_path, database_url, seconds=600)  # refused below however slowly the test runs
    # as if the holder had run on another machine: its death cannot be seen from here
    holder = json.loads(str(_row(database_url)["holder"]))
    sql(
        database_url,
        "UPDATE registry_leases SET holder = :h WHERE name = 'training'",
        h=json.dumps({**holder, "machine": "another-machine"}),
    )
    registry = _registry(tmp_path, database_url)
    with pytest.raises(TrainingInProgressError, match="already running"), registry.training_lock():
        pass
    # its ten minutes are over (the row's expiry moved back to when it was taken; a lease expiring as time
    # passes: test_lease_expired_holder_can_publish_and_promote_nothing)
    sql(database_url, "UPDATE registry_leases SET expires_at = acquired_at WHERE name = 'training'")
    with _take_over(registry) as lease:
        assert lease.generation == 2
