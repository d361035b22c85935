"""Artifact integrity: a model.json changed after training is never served (its HMAC signature needs a key
that does not live in results/), and nothing is ever unpickled.

The tampered model.joblib is a pickle whose ``__reduce__`` writes a marker file: if anything unpickled it,
the marker would appear. A control load of the same payload proves that it would.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import joblib
import pytest

from etl.hashing import sha256_file
from tests.conftest import Service, start_service
from tests.hardening.conftest import (
    PREDICT_BODY,
    TOKEN,
    client,
    malicious_pickle,
    train_and_promote,
    wait_serving,
)
from tests.registry_support import meta_of, registry_db_url, set_row, sql, version_dir
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def _train_unserved(service: Service) -> str:
    """A second version that passed the gate but is not served (promote=false)."""
    with client(service) as c:
        r = c.post("/train", json={"force": True})
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        r = c.post("/evaluate", json={"version": version, "promote": False})
        assert r.status_code == 200 and r.json()["gate"]["passed"] is True, r.text
    return version


def _predict_version(service: Service) -> str:
    r = httpx.post(service.url + "/predict", json=PREDICT_BODY, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_integrity_control_payload_runs_code_when_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "control-marker"
    path = tmp_path / "model.joblib"
    path.write_bytes(malicious_pickle(marker))
    joblib.load(path)  # what the registry would do without the sha256 check
    assert marker.read_text() == "unpickled"


def _tamper_as_an_attacker_would(results: Path, version: str, marker: Path) -> None:
    """Rewrite model.json (always 'benign') and model.joblib (a malicious pickle) in the artifact store, and
    recompute every sha256 in the registry's database: all an attacker who can write both stores, but has
    not the signing key, can do."""
    vdir = version_dir(results, version)
    doc = json.loads((vdir / "model.json").read_text())
    doc["bias"] = -1e6
    (vdir / "model.json").write_text(json.dumps(doc))
    (vdir / "model.joblib").write_bytes(malicious_pickle(marker))
    files = meta_of(results, version)["files"]
    set_row(registry_db_url(results), version, files={name: sha256_file(vdir / name) for name in files})


def test_integrity_tampered_candidate_refused_at_promotion_evaluate_and_pointer_switch(
    promoted_service: tuple[Service, str], tmp_path: Path
) -> None:
    service, served = promoted_service
    candidate = _train_unserved(service)
    marker = tmp_path / "marker"
    _tamper_as_an_attacker_would(service.results_dir, candidate, marker)
    mirror_before = sha256_file(service.results_dir / "model.joblib")

    with client(service) as c:
        r = c.post(f"/models/{candidate}/promote")
        assert r.status_code == 409, r.text
        assert "integrity check" in r.json()["detail"] and candidate in r.json()["detail"], r.text
        r = c.post("/evaluate", json={"version": candidate})
        assert r.status_code == 409, r.text
        assert "integrity check" in r.json()["detail"], r.text
    assert _predict_version(service) == served

    # someone with the database's password switches the pointer to the tampered version behind the
    # registry's back: the watcher refuses it and keeps serving
    sql(
        registry_db_url(service.results_dir),
        "UPDATE registry_pointer SET version = :v, epoch = epoch + 1",
        v=candidate,
    )
    refusal = f"cannot serve version {candidate}"
    wait_until(
        lambda: refusal in service.log(), 10, lambda: f"the refusal in the log:\n{service.log()[-2000:]}"
    )
    # the watcher polls again and refuses again (it logs each time): still the verified model serves
    seen = service.log().count(refusal)
    wait_until(lambda: service.log().count(refusal) >= seen + 2, 10, "two more watcher polls")
    assert _predict_version(service) == served
    r = httpx.get(service.url + "/ready", timeout=10)
    assert r.status_code == 200 and r.json()["model_version"] == served, r.text

    # restart with the pointer on the tampered version: nothing is unpickled, the mirror is not overwritten
    service.stop()
    service2 = start_service(service.workdir, data_url=service.env["DATA_URL"], token=TOKEN)
    try:
        r = httpx.get(service2.url + "/ready", timeout=10)
        assert r.status_code == 503 and "no model is served" in r.json()["detail"], r.text
        r = httpx.post(service2.url + "/predict", json=PREDICT_BODY, timeout=10)
        assert r.status_code == 503 and r.json()["detail"], r.text
        assert "fails its integrity check" in service2.log(), service2.log()[-2000:]
        assert sha256_file(service.results_dir / "model.joblib") == mirror_before, (
            "results/model.joblib was overwritten with the tampered file"
        )
        # an operator rolls back to the good version: serving resumes
        with client(service2) as c:
            r = c.post(f"/models/{served}/promote")
            assert r.status_code == 200 and r.json()["previous_version"] == candidate, r.text
        wait_serving(service2, served)
    finally:
        service2.stop()
    assert not marker.exists(), "the malicious model.joblib was unpickled"
    print(f"\nintegrity: tampered {candidate} refused at promote, evaluate, pointer switch and start-up")


def test_integrity_served_model_changed_on_disk_refused_at_start(
    promoted_service: tuple[Service, str],
) -> None:
    service, served = promoted_service
    other = _train_unserved(service)
    service.stop()
    model = version_dir(service.results_dir, served) / "model.json"  # the store's object
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    model.write_bytes(bytes(data))

    service2 = start_service(service.workdir, data_url=service.env["DATA_URL"], token=TOKEN)
    try:
        r = httpx.get(service2.url + "/ready", timeout=10)
        assert r.status_code == 503, r.text
        log = service2.log()
        assert f"cannot serve version {served}" in log and "fails its integrity check" in log, log[-2000:]
        with client(service2) as c:
            # evaluating a candidate compares it with the served model, which cannot be loaded: refused
            r = c.post("/evaluate", json={"version": other})
            assert r.status_code == 409 and "integrity check" in r.json()["detail"], r.text
            # promoting the tampered version again is refused too
            r = c.post(f"/models/{served}/promote")
            assert r.status_code == 409 and "integrity check" in r.json()["detail"], r.text
            # a good version can be promoted and serves
            r = c.post(f"/models/{other}/promote")
            assert r.status_code == 200, r.text
        wait_serving(service2, other)
        assert _predict_version(service2) == other
        assert train_and_promote(service2)  # and the pipeline carries on
    finally:
        service2.stop()
