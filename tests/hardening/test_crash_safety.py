"""Crash safety: kill -9 the service at random moments of /train, /evaluate (+promote) and /upload.

After every kill the service restarts on the same directories and must serve a version whose sha256
verifies, list no half-written version as servable, have cleaned (registry) or ignore (downloads, backup
staging) leftover temporary files, and complete a re-run of the interrupted step.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from etl.atomic import json_bytes
from etl.hashing import sha256_file
from etl.registry import Registry
from tests.conftest import Service, start_service
from tests.hardening.conftest import (
    TOKEN,
    check_registry_consistent,
    client,
    train_and_promote,
)
from tests.hardening.drive import restartable_drive
from tests.registry_support import meta_of, metrics_of, version_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIALS_PER_STEP = 7
DRIVE_TRIALS = 5
STEPS = ("train", "evaluate", "upload")
VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
SEED = int(os.environ.get("CRASH_SEED", "20261129"))


def _call(service: Service, step: str, body: dict[str, object] | None = None) -> httpx.Response:
    with client(service) as c:
        return c.post(f"/{step}", json=body)


def _fire(service: Service, step: str, body: dict[str, object] | None, box: list[object]) -> None:
    try:
        box.append(_call(service, step, body))
    except httpx.HTTPError as exc:
        box.append(exc)


def _check_after_restart(service: Service) -> str:
    """Everything that must hold after a restart; returns the served version."""
    r = httpx.get(service.url + "/ready", timeout=10)
    assert r.status_code == 200, f"nothing served after restart: {r.text}\n{service.log()[-2000:]}"
    served = r.json()["model_version"]
    root = service.results_dir
    vdir = version_dir(root, served)
    meta = meta_of(root, served)
    assert sha256_file(vdir / "model.joblib") == meta["files"]["model.joblib"], (
        f"served {served} fails sha256"
    )
    # the mirrors of the served version are in sync (recover() re-syncs them after a crash)
    assert sha256_file(root / "model.joblib") == meta["files"]["model.joblib"], (
        "results/model.joblib is stale"
    )
    assert (root / "metrics.json").read_bytes() == json_bytes(metrics_of(root, served)), (
        "results/metrics.json is not the served version's"
    )
    listing = check_registry_consistent(service)
    assert listing["served_version"] == served
    # temporary files are cleaned at start-up; the artifact folder holds published versions only (a killed
    # upload's files are deleted by recover(), which holds the training lease), and the reference sets
    listed = {m["version"] for m in listing["models"]}
    leftovers = [p.name for p in [*root.iterdir(), *(root / "models").iterdir()] if p.name.startswith(".tmp")]
    assert not leftovers, f"temporary files left in the registry: {leftovers}"
    for p in (root / "models").iterdir():
        if p.name == "reference":
            continue
        assert VERSION_RE.match(p.name) and p.name in listed, f"stray entry {p}"
        assert {"model.joblib", "model.json", "holdout.csv"} <= {f.name for f in p.iterdir()}, p
    # backups: staging folders (.tmp-*) may remain and are ignored; every real backup folder is complete
    upload = service.upload_dir
    if upload.is_dir():
        for backup in upload.iterdir():
            if backup.name.startswith(".tmp-"):
                continue
            names = {f.name for f in backup.iterdir()}
            assert {"model.joblib", "metrics.json", "report.html"} <= names, (
                f"incomplete backup {backup}: {names}"
            )
    return served


def test_kill9_during_pipeline_steps_then_restart_is_consistent(tmp_path: Path, bundled_csv: Path) -> None:
    rng = random.Random(SEED)
    workdir = tmp_path / "svc"
    service = start_service(workdir, data_url=str(bundled_csv), token=TOKEN)
    outcomes: Counter[str] = Counter()
    durations: dict[str, float] = {}
    try:
        train_and_promote(service)
        # measure each step once, uninterrupted, to aim the kills inside it
        for step in STEPS:
            t = time.monotonic()
            r = _call(service, step)
            assert r.status_code == 200, r.text
            durations[step] = time.monotonic() - t
        trials = [step for step in STEPS for _ in range(TRIALS_PER_STEP)]
        rng.shuffle(trials)
        for n, step in enumerate(trials, 1):
            body: dict[str, object] | None = None
            if step == "evaluate":  # a fresh, unevaluated version whose evaluation (and promotion) we cut
                r = _call(service, "train")
                assert r.status_code == 200, r.text
                body = {"version": r.json()["version"], "promote": True}
            box: list[object] = []
            thread = threading.Thread(target=_fire, args=(service, step, body, box), daemon=True)
            delay = rng.uniform(0.0, durations[step] * 1.2)
            thread.start()
            time.sleep(delay)
            service.proc.kill()  # SIGKILL: no clean-up of any kind
            service.proc.wait(10)
            thread.join(30)
            finished = bool(box) and isinstance(box[0], httpx.Response)
            outcomes[f"{step}:{'completed' if finished else 'killed'}"] += 1

            service = start_service(workdir, data_url=str(bundled_csv), token=TOKEN, wait_ready=True)
            served = _check_after_restart(service)
            # the interrupted step, re-run, completes
            r = _call(service, step, {"version": body["version"]} if body else None)
            assert r.status_code == 200, f"trial {n} ({step}, kill after {delay:.3f}s): re-run -> {r.text}"
            if step == "upload":
                backup = Path(r.json()["backup_dir"])
                assert {p.name for p in backup.iterdir()} == {"model.joblib", "metrics.json", "report.html"}
                assert r.json()["version"] == served
            # durations drift with machine load: follow them so kills stay inside the step
            durations[step] = 0.5 * durations[step] + 0.5 * r.elapsed.total_seconds()
            check_registry_consistent(service)
        registry = Registry(service.results_dir)
        versions = registry.versions()
    finally:
        service.stop()
    figures = (
        f"{len(trials)} kill -9 trials (seed {SEED}): {dict(sorted(outcomes.items()))}; "
        f"{len(versions)} versions in the registry, all consistent"
    )
    print("\ncrash safety:", figures)
    assert len(trials) >= 20, figures


def test_kill9_during_drive_upload_then_rerun_leaves_one_copy(tmp_path: Path, bundled_csv: Path) -> None:
    """Kills inside a Drive upload (Drive made slow, so the kills land between its calls): the re-run
    resumes from the Drive state recorded in the registry, so each version ends with one Drive folder
    holding one copy of each file."""
    rng = random.Random(SEED + 1)
    outcomes: Counter[str] = Counter()
    folder_of: dict[str, str] = {}
    with restartable_drive(tmp_path / "drive") as drive:
        env = drive.service_env(DRIVE_TIMEOUT="10")
        service = start_service(tmp_path / "svc", data_url=str(bundled_csv), token=TOKEN, extra_env=env)
        try:
            drive.state.inject("*", "slow", delay=0.15, times=100_000)  # every Drive call answers late
            version = train_and_promote(service)
            t = time.monotonic()
            r = _call(service, "upload")
            assert r.status_code == 200, r.text
            duration = time.monotonic() - t
            folder_of[version] = r.json()["drive"]["folder_id"]
            for _ in range(DRIVE_TRIALS):
                version = train_and_promote(service)  # a fresh version: its upload starts from nothing
                box: list[object] = []
                thread = threading.Thread(target=_fire, args=(service, "upload", None, box), daemon=True)
                delay = rng.uniform(0.0, duration)
                thread.start()
                time.sleep(delay)
                service.proc.kill()
                service.proc.wait(10)
                thread.join(30)
                finished = bool(box) and isinstance(box[0], httpx.Response)
                outcomes["completed" if finished else "killed"] += 1
                service = start_service(
                    tmp_path / "svc", data_url=str(bundled_csv), token=TOKEN, extra_env=env, wait_ready=True
                )
                assert _check_after_restart(service) == version
                r = _call(service, "upload")
                assert r.status_code == 200, f"re-run after a kill at {delay:.2f}s: {r.text}"
                assert r.json()["version"] == version, r.text
                folder_of[version] = r.json()["drive"]["folder_id"]
        finally:
            service.stop()
        folders = drive.state.children(drive.env.parent_id, folders=True)
        contents = {f.id: sorted(c.name for c in drive.state.children(f.id)) for f in folders}
    figures = (
        f"{DRIVE_TRIALS} kill -9 trials inside Drive uploads of about {duration:.1f}s: {dict(outcomes)}; "
        f"{len(folder_of)} versions uploaded, Drive holds {len(folders)} folder(s)"
    )
    print("\ncrash safety (Drive):", figures)
    assert sorted(contents) == sorted(folder_of.values()), f"duplicate/stray folders: {contents}; {figures}"
    assert all(names == ["metrics.json", "model.joblib", "report.html"] for names in contents.values()), (
        contents
    )
