"""Several replicas on one registry (issue 17): three real ``python -m app`` processes, each in its own
working directory, sharing nothing but REGISTRY_URL (a private PostgreSQL), ARTIFACT_URL (moto's S3 server)
and MODEL_SIGNING_KEY.

- under round-robin load for 20 s with a promotion at 5 s: no request fails, each replica switches once and
  serves the new version within 5 s (its X-Model-Version);
- two trainers started together, 20 rounds: one 200 and one 409 each time;
- a trainer frozen (SIGSTOP) past its lease: taken over, and its registration refused when it wakes; a trainer
  killed with SIGKILL: taken over at once;
- ten racing promotions through three replicas: one winner, the epoch up by one;
- a trainer killed while uploading its version to S3: no version, no change on any replica, and its files
  removed by the next recovery.

The races run against the database, which decides them (moto's conditional writes are not atomic).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BUNDLED_CSV, ROOT, Service, start_service
from tests.hardening.conftest import PREDICT_BODY, Route, data_server
from tests.postgres import PostgresCluster
from tests.registry_support import sql
from tests.s3_server import S3Server, run_s3_server
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "replicas-token-5b2f8e1a9c3d7406"
REPLICAS = 3
LOAD_SECONDS, PROMOTE_AT, SWITCH_WITHIN = 20.0, 5.0, 5.0
LOAD_THREADS = 3
TRAINER_ROUNDS = 20
RACERS = 10
QUICK = {"NESTED_REPEATS": "1", "NESTED_FOLDS": "2"}  # trainings whose figures no test asserts
BODY = PREDICT_BODY  # a malignant row of the dataset


@dataclass
class Cluster:
    """The shared stores and the replicas (module-wide: each test leaves a passed version served)."""

    registry_url: str
    artifact_url: str
    s3: S3Server
    env: dict[str, str]  # what every replica and trainer shares: the two URLs, S3 credentials, the key
    replicas: list[Service] = field(default_factory=list)

    def http(self, n: int, timeout: float = 120) -> httpx.Client:
        service = self.replicas[n]
        return httpx.Client(base_url=service.url, headers=service.auth(), timeout=timeout)

    def served(self) -> tuple[str | None, int]:
        (row,) = sql(self.registry_url, "SELECT version, epoch FROM registry_pointer")
        return row["version"], int(row["epoch"])

    def versions(self) -> set[str]:
        return {r["version"] for r in sql(self.registry_url, "SELECT version FROM registry_versions")}

    def answering(self, n: int) -> str | None:
        """The version replica ``n`` answers /predict with (its X-Model-Version)."""
        r = httpx.post(self.replicas[n].url + "/predict", json=BODY, timeout=10)
        return r.headers.get("x-model-version") if r.status_code == 200 else None

    def wait_all_serve(self, version: str, timeout: float = 60) -> None:
        wait_until(
            lambda: all(self.answering(n) == version for n in range(len(self.replicas))),
            timeout,
            f"every replica to serve {version}",
            ignore=(httpx.HTTPError,),
        )

    def stored_keys(self, prefix: str = "") -> list[str]:
        """The keys under ``prefix`` in the bucket, relative to ARTIFACT_URL (boto3, behind the store)."""
        bucket, _, root = self.artifact_url.removeprefix("s3://").partition("/")
        keys: list[str] = []
        for page in (
            self.s3.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=f"{root}/{prefix}")
        ):
            keys += [item["Key"].removeprefix(f"{root}/") for item in page.get("Contents", [])]
        return keys

    def cli_env(self, workdir: Path, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            **self.env,
            "PYTHONPATH": str(ROOT),
            "DATA_URL": str(BUNDLED_CSV),
            "DATA_DIR": str(workdir / "data"),
            "RESULTS_DIR": str(workdir / "results"),
            "UPLOAD_DIR": str(workdir / "upload"),
            **QUICK,
            **extra,
        }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("replicas")
    with run_s3_server(base / "s3") as s3:
        registry_url, artifact_url = postgres.create_database("replicas"), f"s3://{s3.bucket}/replicas"
        shared = Cluster(
            registry_url=registry_url,
            artifact_url=artifact_url,
            s3=s3,
            env={
                **s3.env,
                "REGISTRY_URL": registry_url,
                "ARTIFACT_URL": artifact_url,
                "ARTIFACT_ENDPOINT_URL": s3.endpoint,
                "MODEL_SIGNING_KEY": secrets.token_hex(32),  # the same on every replica
            },
        )
        try:
            for n in range(REPLICAS):
                shared.replicas.append(
                    start_service(
                        base / f"replica{n}",
                        data_url=str(BUNDLED_CSV),
                        token=TOKEN,
                        extra_env={**shared.env, **QUICK, "MODEL_POLL_SECONDS": "0.2"},
                    )
                )
            with shared.http(0) as c:
                r = c.post("/train", json={})
                assert r.status_code == 200, r.text
                first = r.json()["version"]
                r = c.post("/evaluate", json={"version": first})
                assert r.status_code == 200 and r.json()["promoted"], r.text
            shared.wait_all_serve(first)
            yield shared
        finally:
            for service in shared.replicas:
                service.stop()


def _train_passed(cluster: Cluster, n: int = 0) -> str:
    """A new version, trained and evaluated (passed) on replica ``n``, not promoted."""
    with cluster.http(n) as c:
        r = c.post("/train", json={"force": True})
        assert r.status_code == 200, r.text
        version = str(r.json()["version"])
        r = c.post("/evaluate", json={"version": version, "promote": False})
        assert r.status_code == 200 and r.json()["gate"]["passed"], r.text
    return version


# --- replicas follow one promotion under load -------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    replica: int
    sent: float
    received: float
    status: int
    header: str | None
    version: str | None
    error: str = ""


def _load(
    cluster: Cluster,
    offset: int,
    stop: threading.Event,
    answers: list[Answer],
    lock: threading.Lock,
    counts: Counter[int],
) -> None:
    """Round-robin /predict over the replicas until ``stop`` (kept-alive connections, one per replica)."""
    clients = [httpx.Client(base_url=s.url, timeout=30) for s in cluster.replicas]
    mine: list[Answer] = []
    n = offset
    try:
        while not stop.is_set():
            k = n % len(clients)
            n += 1
            sent = time.monotonic()
            try:
                r = clients[k].post("/predict", json=BODY)
                body = r.json() if r.status_code == 200 else {}
                header = r.headers.get("x-model-version")
                answer = Answer(k, sent, time.monotonic(), r.status_code, header, body.get("model_version"))
            except (httpx.HTTPError, ValueError) as exc:
                answer = Answer(k, sent, time.monotonic(), 0, None, None, f"{type(exc).__name__}: {exc}")
            mine.append(answer)
            with lock:
                counts[k] += 1
    finally:
        for client in clients:
            client.close()
        with lock:
            answers.extend(mine)


def _log_swaps(service: Service, version: str) -> int:
    return service.log().count(f"now serving model version {version} ")


def test_replicas_follow_one_promotion_under_load(cluster: Cluster) -> None:
    old, _ = cluster.served()
    assert old is not None
    new = _train_passed(cluster)
    swaps_before = [_log_swaps(s, new) for s in cluster.replicas]
    answers: list[Answer] = []
    lock = threading.Lock()
    counts: Counter[int] = Counter()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_load, args=(cluster, i, stop, answers, lock, counts), daemon=True)
        for i in range(LOAD_THREADS)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        # the load's schedule: the promotion at 5 s, once every replica has answered
        wait_until(
            lambda: time.monotonic() - started >= PROMOTE_AT and all(counts[k] for k in range(REPLICAS)),
            60,
            "5 s of load answered by every replica",
        )
        with cluster.http(1) as c:
            epoch = c.get("/models").json()["epoch"]
            promote_sent = time.monotonic()
            r = c.post(f"/models/{new}/promote", params={"expected_epoch": epoch})
            promote_done = time.monotonic()
        assert r.status_code == 200, r.text
        assert r.json() == {"version": new, "previous_version": old, "promoted": True, "epoch": epoch + 1}
        wait_until(lambda: time.monotonic() - started >= LOAD_SECONDS, 60, "20 s of load")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} failed requests, e.g. {failed[:3]}"
    assert all(a.header == a.version for a in answers), "X-Model-Version differs from the body's version"
    assert {a.version for a in answers} == {old, new}
    delays = []
    for k in range(REPLICAS):
        mine = [a for a in answers if a.replica == k]
        first_new = min(a.received for a in mine if a.version == new)
        # one switch: once a replica answered with the new version, every request sent later gets it too
        late_old = [a for a in mine if a.version == old and a.sent > first_new]
        assert not late_old, f"replica {k} answered {old} again after {new}: {late_old[:3]}"
        assert not [a for a in mine if a.version == new and a.received < promote_sent], f"replica {k} early"
        assert first_new - promote_done <= SWITCH_WITHIN, (
            f"replica {k} switched after {first_new - promote_done}s"
        )
        assert _log_swaps(cluster.replicas[k], new) == swaps_before[k] + 1, (
            f"replica {k} swapped more than once"
        )
        delays.append(first_new - promote_sent)
    assert cluster.served() == (new, epoch + 1)
    total = len(answers)
    switches = ", ".join(f"replica {k} {d * 1000:.0f} ms" for k, d in enumerate(delays))
    print(
        f"\nreplicas under load: {total} requests in {LOAD_SECONDS:.0f} s over {REPLICAS} replicas "
        f"({total / LOAD_SECONDS:.0f}/s), all 200; the promotion through replica 1 answered in "
        f"{(promote_done - promote_sent) * 1000:.0f} ms; first answer with the new version, counted from "
        f"when the promotion was sent: {switches}; one switch each"
    )


# --- the training lease across replicas --------------------------------------------------------------------
def test_replicas_two_trainers_together_one_409_each_round(cluster: Cluster) -> None:
    outcomes: list[list[tuple[int, float]]] = []
    for _ in range(TRAINER_ROUNDS):
        barrier = threading.Barrier(2)
        results: list[tuple[int, float]] = []

        def train(
            n: int, barrier: threading.Barrier = barrier, results: list[tuple[int, float]] = results
        ) -> None:
            with cluster.http(n) as c:
                barrier.wait()
                sent = time.monotonic()
                r = c.post("/train", json={"force": True})
                results.append((r.status_code, time.monotonic() - sent))

        threads = [threading.Thread(target=train, args=(n,)) for n in (0, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        outcomes.append(sorted(results))
    statuses = [[status for status, _ in pair] for pair in outcomes]
    assert statuses == [[200, 409]] * TRAINER_ROUNDS, statuses
    refused = [seconds for pair in outcomes for status, seconds in pair if status == 409]
    trained = [seconds for pair in outcomes for status, seconds in pair if status == 200]
    print(
        f"\ntwo trainers together, {TRAINER_ROUNDS} rounds: one 200 and one 409 each time; the 409 after "
        f"{max(refused) * 1000:.0f} ms at most (median {sorted(refused)[len(refused) // 2] * 1000:.0f} ms), "
        f"the trainings took {min(trained):.1f}-{max(trained):.1f} s"
    )


def _lease_holder_pid(cluster: Cluster) -> int | None:
    (row,) = sql(cluster.registry_url, "SELECT token, holder FROM registry_leases WHERE name = 'training'")
    return json.loads(row["holder"])["pid"] if row["token"] else None


def _cli_trainer(cluster: Cluster, workdir: Path, data_url: str, **env: str) -> subprocess.Popen[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "etl", "train", "--force"],
        cwd=workdir,
        env=cluster.cli_env(workdir, DATA_URL=data_url, DOWNLOAD_RETRIES="0", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_replicas_stalled_trainer_is_taken_over_and_fenced(cluster: Cluster, tmp_path: Path) -> None:
    """A CLI trainer (lease of 2 s) holds the lease while its data source answers slowly; it is frozen with
    SIGSTOP, a replica's /train takes the lease over once it expires, and the frozen trainer, woken up,
    finishes its training and is refused the registration."""
    before = cluster.versions()
    with data_server({"/slow.csv": Route(BUNDLED_CSV.read_bytes(), delay_before=3.0)}) as source:
        stale = _cli_trainer(cluster, tmp_path / "stale", source.url("/slow.csv"), TRAINING_LEASE_SECONDS="2")
        try:
            wait_until(
                lambda: _lease_holder_pid(cluster) == stale.pid, 60, "the CLI trainer to hold the lease"
            )
            os.kill(stale.pid, signal.SIGSTOP)
            frozen = time.monotonic()
            attempts: Counter[int] = Counter()

            def replica_trains() -> dict[str, Any] | None:
                with cluster.http(0) as c:
                    r = c.post("/train", json={"force": True})
                attempts[r.status_code] += 1
                return r.json() if r.status_code == 200 else None

            taken = wait_until(replica_trains, 120, "a replica to take the expired lease over", interval=0.2)
            took = time.monotonic() - frozen
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stale.pid, signal.SIGCONT)
        output, _ = stale.communicate(timeout=120)
    assert stale.returncode == 1, output
    assert "lease expired and another process took it over" in output, output
    assert taken is not None and set(attempts) <= {200, 409} and attempts[200] == 1, attempts
    new = cluster.versions() - before
    assert new == {taken["version"]}, new  # nothing of the stale trainer's
    stray = {key.split("/")[0] for key in cluster.stored_keys()} - cluster.versions() - {"reference"}
    assert not stray, f"files of unpublished versions are left in the bucket: {stray}"
    print(
        f"\nstalled trainer: frozen with SIGSTOP holding a 2 s lease; a replica's /train took it over after "
        f"{took:.1f} s ({attempts[409]} x 409 before); the woken trainer's registration was refused"
    )


def test_replicas_killed_trainer_lease_taken_over_at_once(cluster: Cluster, tmp_path: Path) -> None:
    with data_server({"/slow.csv": Route(BUNDLED_CSV.read_bytes(), delay_before=60.0)}) as source:
        holder = _cli_trainer(cluster, tmp_path / "killed", source.url("/slow.csv"))  # a 60 s lease
        try:
            wait_until(
                lambda: _lease_holder_pid(cluster) == holder.pid, 60, "the CLI trainer to hold the lease"
            )
        finally:
            holder.kill()
            holder.communicate(timeout=60)
        killed = time.monotonic()
        with cluster.http(1) as c:
            r = c.post("/train", json={"force": True})
        took = time.monotonic() - killed
    assert r.status_code == 200, r.text  # at once: the holder is a dead process on this machine
    print(
        f"\nkilled trainer (SIGKILL, holding a 60 s lease): the next /train took the lease over at once and "
        f"answered 200 after its whole training ({took:.1f} s)"
    )


# --- promotions race ---------------------------------------------------------------------------------------
def test_replicas_ten_racing_promotions_one_winner(cluster: Cluster) -> None:
    candidates = [_train_passed(cluster, n) for n in range(REPLICAS)]
    _, epoch = cluster.served()
    promotions_before = len(sql(cluster.registry_url, "SELECT epoch FROM registry_promotions"))
    barrier = threading.Barrier(RACERS)
    results: list[tuple[str, int, str]] = []

    def promote(i: int) -> None:
        version = candidates[i % len(candidates)]
        with cluster.http(i % REPLICAS) as c:
            barrier.wait()
            r = c.post(f"/models/{version}/promote", params={"expected_epoch": epoch})
        results.append((version, r.status_code, r.text))

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    statuses = Counter(status for _, status, _ in results)
    assert statuses == {200: 1, 409: RACERS - 1}, results
    assert all("another promotion committed first" in text for _, status, text in results if status == 409)
    (winner,) = [version for version, status, _ in results if status == 200]
    assert cluster.served() == (winner, epoch + 1)
    assert len(sql(cluster.registry_url, "SELECT epoch FROM registry_promotions")) == promotions_before + 1
    cluster.wait_all_serve(winner)
    print(f"\n{RACERS} racing promotions through {REPLICAS} replicas: 1 x 200, {RACERS - 1} x 409, epoch +1")


# --- a crash while a version is uploaded -------------------------------------------------------------------
CRASHING_TRAINER = """
import sys, time
from pathlib import Path
from etl.artifacts import ArtifactStore

real, puts = ArtifactStore.put_new, []

def put_new(self, key, data):
    digest = real(self, key, data)
    puts.append(key)
    if len(puts) == 2:  # two of the version's files are in the bucket: the process dies here
        Path(sys.argv[1]).write_text(key.split("/")[0])
        time.sleep(600)
    return digest

ArtifactStore.put_new = put_new
from etl.__main__ import main
sys.exit(main(["train", "--force"]))
"""


def test_replicas_trainer_killed_during_upload_publishes_nothing(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, epoch = cluster.served()
    versions = cluster.versions()
    marker = tmp_path / "uploading"
    trainer = subprocess.Popen(
        [sys.executable, "-c", CRASHING_TRAINER, str(marker)],
        cwd=tmp_path,
        env=cluster.cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: marker.exists() or trainer.poll() is not None, 120, "the upload to begin")
        assert trainer.poll() is None, trainer.communicate()[0]
    finally:
        trainer.kill()  # SIGKILL between two files of the version
        trainer.communicate(timeout=60)
    unpublished = marker.read_text()
    assert len(cluster.stored_keys(f"{unpublished}/")) == 2  # its garbage is in the bucket...
    assert cluster.versions() == versions and cluster.served() == (served, epoch)  # ...and nothing else
    for n in range(REPLICAS):  # every replica goes on answering with the served version
        assert cluster.answering(n) == served
    # the next recovery (a replica's start, a pipeline run) holds the lease and deletes the garbage
    for name, value in cluster.env.items():
        monkeypatch.setenv(name, value)
    from etl.registry import Registry

    registry = Registry(
        tmp_path / "observer",
        registry_url=cluster.registry_url,
        artifact_url=cluster.artifact_url,
        artifact_endpoint_url=cluster.s3.endpoint,
    )
    try:
        assert unpublished in registry.recover()
    finally:
        registry.close()
    assert cluster.stored_keys(f"{unpublished}/") == []
    assert cluster.versions() == versions and cluster.served() == (served, epoch)
    print("\ntrainer killed after 2 of its files reached S3: no version, no replica changed, garbage removed")
