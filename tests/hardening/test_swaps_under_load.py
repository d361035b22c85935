"""Model swaps under load: /predict and /predict/batch at full speed while the pipeline churns.

Load threads send single and batch predictions for at least 30 s while another thread trains, evaluates
(promoting), and rolls back to the previous version through the API, at least 10 times each. No request may
fail, and every answer must name a version that was promoted at some point.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import Service
from tests.hardening.conftest import (
    PREDICT_BODY,
    check_registry_consistent,
    client,
    percentile,
    start_promoted,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DURATION = 30.0
MIN_CYCLES = 10
MAX_DURATION = 120.0  # the churn keeps going past 30 s only until it has done MIN_CYCLES
LOAD_THREADS = 4
BATCH = [PREDICT_BODY, {**PREDICT_BODY, "clump_thickness": 1, "bare_nuclei": 1}] * 10


@dataclass
class LoadStats:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _load(service: Service, stop: threading.Event, stats: LoadStats, seed: int) -> None:
    """One load thread. It asserts nothing: whatever goes wrong is collected in ``stats.errors`` for the
    test's own thread to assert (an assertion here would only end this thread)."""
    errors: list[str] = []
    try:
        _load_until_stopped(service, stop, stats, seed, errors)
    except Exception as exc:  # anything unexpected ends this thread: report it instead of losing it
        errors.append(f"load thread {seed} died: {type(exc).__name__}: {exc}")
    with stats.lock:
        stats.errors += errors


def _load_until_stopped(
    service: Service, stop: threading.Event, stats: LoadStats, seed: int, errors: list[str]
) -> None:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    i = seed
    with httpx.Client(base_url=service.url, timeout=30) as c:
        while not stop.is_set():
            i += 1
            batch = i % 4 == 0
            started = time.perf_counter()
            try:
                if batch:
                    r = c.post("/predict/batch", json={"instances": BATCH})
                else:
                    r = c.post("/predict", json=PREDICT_BODY)
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - started)
            statuses[r.status_code] += 1
            kinds["batch" if batch else "single"] += 1
            if r.status_code == 200:
                body = r.json()
                versions[body["model_version"]] += 1
                if batch and len(body["predictions"]) != len(BATCH):
                    errors.append(
                        f"200 with {len(body['predictions'])} predictions for {len(BATCH)} instances"
                    )
            else:
                errors.append(f"{r.status_code}: {r.text[:200]}")
    with stats.lock:
        stats.latencies += latencies
        stats.statuses.update(statuses)
        stats.versions.update(versions)
        stats.kinds.update(kinds)


@pytest.mark.parametrize("workers", [1, 2])
def test_predict_under_model_churn_never_fails(tmp_path: Path, bundled_csv: Path, workers: int) -> None:
    """With 2 workers (the container's default) a promotion made by one reaches the other through the
    registry pointer it polls (MODEL_POLL_SECONDS), so each worker swaps on its own."""
    service, first = start_promoted(
        tmp_path / "svc", str(bundled_csv), extra_env={"WEB_CONCURRENCY": str(workers)}
    )
    try:
        _churn(service, first, workers)
    finally:
        service.stop()


def _churn(service: Service, first: str, workers: int) -> None:
    stats = LoadStats()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_load, args=(service, stop, stats, n), daemon=True)
        for n in range(LOAD_THREADS)
    ]
    promoted = {first}  # every version that was served at some moment
    steps: Counter[str] = Counter()
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        with client(service) as c:
            previous = first
            while time.monotonic() - started < MAX_DURATION:
                if time.monotonic() - started >= DURATION and min(steps.values(), default=0) >= MIN_CYCLES:
                    break
                r = c.post("/train", json={"force": True})
                assert r.status_code == 200, r.text
                version = r.json()["version"]
                steps["train"] += 1
                r = c.post("/evaluate", json={"version": version})
                assert r.status_code == 200 and r.json()["promoted"] is True, r.text
                promoted.add(version)
                steps["evaluate+promote"] += 1
                r = c.post(f"/models/{previous}/promote")
                assert r.status_code == 200 and r.json()["previous_version"] == version, r.text
                steps["rollback"] += 1
                r = c.post(f"/models/{version}/promote")
                assert r.status_code == 200 and r.json()["previous_version"] == previous, r.text
                steps["re-promote"] += 1
                previous = version
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    elapsed = time.monotonic() - started
    assert not [t.name for t in threads if t.is_alive()], "load threads did not stop within 60 s"

    total = sum(stats.statuses.values()) + len([e for e in stats.errors if not e[:3].isdigit()])
    p50, p99 = percentile(stats.latencies, 0.50) * 1000, percentile(stats.latencies, 0.99) * 1000
    figures = (
        f"{total} requests in {elapsed:.1f}s ({total / elapsed:.0f}/s; {dict(stats.kinds)}), "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, statuses {dict(stats.statuses)}; churn {dict(steps)}; "
        f"versions answering {len(stats.versions)} of {len(promoted)} promoted"
    )
    print(f"\nswaps under load ({workers} worker(s)):", figures)
    assert not stats.errors, f"{len(stats.errors)} failed requests, first: {stats.errors[:5]}; {figures}"
    assert set(stats.statuses) == {200}, figures
    assert min(steps.values()) >= MIN_CYCLES, figures
    unknown = set(stats.versions) - promoted
    assert not unknown, f"answers named versions never promoted: {unknown}; {figures}"
    assert len(stats.versions) >= 2, figures
    check_registry_consistent(service)
