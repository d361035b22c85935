"""etl.registry: versions published last (files create-only and checked, then the row), signed model.json
(nothing unpickled), evaluations, promotion by compare-and-swap, the training lease, recovery; on SQLite and
on a real PostgreSQL (the ``database_url`` fixture), with the default local artifact folder."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from etl.artifacts import ArtifactStore
from etl.errors import (
    ArtifactIntegrityError,
    ArtifactStoreError,
    ModelNotFoundError,
    NoServedModelError,
    NotEvaluatedError,
    NotServableError,
    PromotionConflictError,
    TrainingInProgressError,
)
from etl.registry import VERSION_RE, Registry, new_version_name
from etl.scorer import LinearModel
from etl.signing import sign
from tests.conftest import ROOT
from tests.pipeline_support import fitted_version_files
from tests.registry_support import set_row, sql

KEY = b"k" * 32

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], pd.DataFrame]:
    return fitted_version_files(tmp_path_factory.mktemp("data"))


@pytest.fixture
def url(database_url: str) -> str:
    return database_url


def _registry(root: Path, url: str, key: bytes | None = KEY) -> Registry:
    return Registry(root, key, registry_url=url, artifact_url=str(root / "models"))


def _create(reg: Registry, fitted, minutes: int = 0, **meta: object) -> str:
    version = new_version_name("salt", now=T0 + timedelta(minutes=minutes))
    reg.create_version(version, fitted[0], {"threshold": 0.5, **meta})
    return version


def _evaluated(reg: Registry, version: str, passed: bool = True, recall: float = 0.97) -> None:
    reg.write_metrics(
        version,
        {
            "recall": recall,
            "quality_gate": {"passed": passed, "reasons": [] if passed else ["recall FAILED"]},
        },
    )


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


def test_new_version_name_is_sortable_and_unique():
    names = [new_version_name("x", now=T0) for _ in range(50)]
    assert all(VERSION_RE.fullmatch(n) for n in names)
    assert len(set(names)) == 50
    assert new_version_name("x", now=T0) < new_version_name("x", now=T0 + timedelta(seconds=1))
    assert names[0].startswith("20250601T120000Z-")


def test_registry_create_version_stores_files_then_row(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    version = _create(reg, fitted, data_sha256="d" * 64)
    vdir = tmp_path / "models" / version
    assert sorted(p.name for p in vdir.iterdir()) == ["holdout.csv", "model.joblib", "model.json"]
    meta = reg.read_meta(version)
    assert meta["version"] == version and meta["threshold"] == 0.5 and meta["data_sha256"] == "d" * 64
    for name in ("model.json", "model.joblib", "holdout.csv"):
        assert meta["files"][name] == hashlib.sha256((vdir / name).read_bytes()).hexdigest()
    assert meta["model_signature"] == sign(KEY, (vdir / "model.json").read_bytes())
    assert meta["created_at"]
    (row,) = sql(url, "SELECT status, lease_generation FROM registry_versions")
    assert row["status"] == "trained" and row["lease_generation"] >= 1
    pd.testing.assert_frame_equal(reg.load_holdout(version), fitted[1].reset_index(drop=True))
    assert _leftovers(tmp_path) == []
    assert reg.served_version() is None and reg.status(version) == "trained"


def test_registry_versions_oldest_first_and_latest(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    assert reg.versions() == []
    with pytest.raises(ModelNotFoundError, match="no model has been trained yet"):
        reg.latest_version()
    late = _create(reg, fitted, minutes=10)
    early = _create(reg, fitted, minutes=0)
    middle = _create(reg, fitted, minutes=5)
    # files without a row (an unfinished publication) are not a version
    reg.store.put_new("20250601T140000Z-11111111/model.json", b"{}")
    assert reg.versions() == [early, middle, late]
    assert reg.latest_version() == late


@pytest.mark.parametrize("name", ["nope", "../etc", "20250601T120000Z-deadbeef", ""])
def test_registry_check_version_unknown_or_malformed_raises_not_found(tmp_path: Path, name: str):
    with pytest.raises(ModelNotFoundError) as err:
        Registry(tmp_path, KEY).check_version(name)
    assert "python -m etl models" in str(err.value) or "does not exist" in str(err.value)


def test_registry_create_version_store_failure_publishes_nothing(
    tmp_path: Path, fitted, url: str, monkeypatch: pytest.MonkeyPatch
):
    reg = _registry(tmp_path, url)
    real = ArtifactStore.put_new
    calls: list[str] = []

    def failing(self: ArtifactStore, key: str, data: bytes) -> str:
        calls.append(key)
        if len(calls) == 2:
            raise ArtifactStoreError("disk full", step=f"put_new {key}")
        return real(self, key, data)

    monkeypatch.setattr(ArtifactStore, "put_new", failing)
    with pytest.raises(ArtifactStoreError, match="disk full"):
        _create(reg, fitted)
    assert reg.versions() == []
    assert list((tmp_path / "models").iterdir()) == []  # the first file, uploaded, was removed again
    assert _leftovers(tmp_path) == []


def test_registry_create_version_changed_on_read_back_publishes_nothing(
    tmp_path: Path, fitted, url: str, monkeypatch: pytest.MonkeyPatch
):
    """The store answers the read-back with other bytes (a broken proxy, a bucket someone writes to): the
    row is never inserted."""
    reg = _registry(tmp_path, url)
    monkeypatch.setattr(ArtifactStore, "sha256", lambda self, key: "0" * 64)
    with pytest.raises(ArtifactIntegrityError, match=r"reads back .* nothing is published"):
        _create(reg, fitted)
    assert reg.versions() == [] and list((tmp_path / "models").iterdir()) == []


def test_registry_load_model_reads_the_signed_json(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    version = _create(reg, fitted)
    model = reg.load_model(version)
    assert model == LinearModel.from_dict(json.loads(fitted[0]["model.json"]))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: p.write_bytes(p.read_bytes().replace(b'"threshold": ', b'"threshold": 0.0001, "x": ')),
        lambda p: p.write_bytes(p.read_bytes() + b" "),
        lambda p: p.unlink(),
    ],
    ids=["edited", "one-byte", "deleted"],
)
def test_registry_load_model_refuses_a_changed_model_json(tmp_path: Path, fitted, tamper):
    reg = Registry(tmp_path, KEY)
    version = _create(reg, fitted)
    tamper(tmp_path / "models" / version / "model.json")  # the store's object, changed behind its back
    with pytest.raises(ArtifactIntegrityError) as err:
        reg.load_model(version)
    assert version in str(err.value)


def test_registry_load_model_refuses_a_hash_fixed_up_in_the_database_without_the_key(
    tmp_path: Path, fitted, url: str
):
    """An attacker who can write the store and the database recomputes every sha256 and the "signature";
    without the key, no use."""
    reg = _registry(tmp_path, url)
    version = _create(reg, fitted)
    path = tmp_path / "models" / version / "model.json"
    doc = json.loads(path.read_text())
    doc["bias"] = -1000.0  # always "benign"
    path.write_text(json.dumps(doc))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    files = {**reg.read_meta(version)["files"], "model.json": digest}
    set_row(url, version, files=files, model_signature=digest)
    with pytest.raises(ArtifactIntegrityError, match="signature does not match"):
        reg.load_model(version)
    with pytest.raises(ArtifactIntegrityError, match="signature does not match"):
        _registry(tmp_path, url, b"another key of thirty-two bytes!").load_model(_create(reg, fitted, 1))


def test_registry_load_model_refuses_a_signed_document_that_is_not_a_model(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    version = _create(reg, fitted)
    path = tmp_path / "models" / version / "model.json"
    path.write_text(json.dumps({"format": "pickle", "payload": "cos\nsystem\n"}))
    set_row(url, version, model_signature=sign(KEY, path.read_bytes()))
    with pytest.raises(ArtifactIntegrityError, match="is not a valid model"):
        reg.load_model(version)


def test_registry_without_a_key_refuses_to_register_or_load(tmp_path: Path, fitted):
    version = _create(Registry(tmp_path, KEY), fitted)
    keyless = Registry(tmp_path)
    assert keyless.versions() == [version]
    with pytest.raises(ArtifactIntegrityError, match="without a model-signing key"):
        keyless.load_model(version)
    with pytest.raises(ArtifactIntegrityError, match="without a model-signing key"):
        _create(keyless, fitted, 1)
    assert keyless.versions() == [version]


def test_registry_update_meta_changes_only_the_mutable_state(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    version = _create(reg, fitted)
    meta = reg.update_meta(version, drive={"status": "uploaded"}, uploads=[{"timestamp": "x"}])
    assert meta["drive"] == {"status": "uploaded"} and meta["uploads"] == [{"timestamp": "x"}]
    with pytest.raises(ValueError, match="never change"):
        reg.update_meta(version, files={}, threshold=0.0)
    assert reg.read_meta(version)["threshold"] == 0.5


def test_registry_promote_refuses_not_evaluated(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    version = _create(reg, fitted)
    with pytest.raises(NotEvaluatedError, match="has not been evaluated"):
        reg.promote(version)
    assert reg.pointer().version is None and reg.pointer().epoch == 0
    assert not (tmp_path / "model.joblib").exists()


def test_registry_promote_refuses_gate_failed(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    version = _create(reg, fitted)
    _evaluated(reg, version, passed=False)
    with pytest.raises(NotServableError) as err:
        reg.promote(version)
    assert "failed the quality gate" in str(err.value) and "recall FAILED" in str(err.value)
    assert reg.served_version() is None and reg.status(version) == "rejected"


def test_registry_promote_refuses_tampered_model_and_keeps_served(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
    good, bad = _create(reg, fitted, 0), _create(reg, fitted, 1)
    _evaluated(reg, good)
    _evaluated(reg, bad)
    reg.promote(good)
    (tmp_path / "models" / bad / "model.joblib").write_bytes(b"tampered")
    with pytest.raises(ArtifactIntegrityError, match=r"model\.joblib of version"):
        reg.promote(bad)
    assert reg.served_version() == good and reg.pointer().epoch == 1
    assert (tmp_path / "model.joblib").read_bytes() == (
        tmp_path / "models" / good / "model.joblib"
    ).read_bytes()


def test_registry_promote_switches_pointer_epoch_and_mirrors(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    with pytest.raises(NoServedModelError, match="no model is served yet"):
        reg.require_served()
    v1, v2 = _create(reg, fitted, 0), _create(reg, fitted, 1)
    _evaluated(reg, v1, recall=0.96)
    _evaluated(reg, v2, recall=0.99)

    assert reg.promote(v1) is None
    assert reg.pointer().version == v1 and reg.pointer().epoch == 1
    assert reg.promote(v2) == v1
    assert reg.served_version() == v2 == reg.require_served() and reg.pointer().epoch == 2
    assert [(p["epoch"], p["version"], p["previous"]) for p in reg.promotions()] == [
        (1, v1, None),
        (2, v2, v1),
    ]
    v2_dir = tmp_path / "models" / v2
    assert (tmp_path / "model.joblib").read_bytes() == (v2_dir / "model.joblib").read_bytes()
    assert json.loads((tmp_path / "metrics.json").read_text())["recall"] == 0.99
    assert _leftovers(tmp_path) == []


def test_registry_promote_with_a_stale_epoch_conflicts_and_changes_nothing(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    v1, v2 = _create(reg, fitted, 0), _create(reg, fitted, 1)
    _evaluated(reg, v1)
    _evaluated(reg, v2)
    reg.promote(v1, expected_epoch=0)
    with pytest.raises(PromotionConflictError, match="epoch 1, expected 0"):
        reg.promote(v2, expected_epoch=0)
    assert reg.pointer().version == v1 and reg.pointer().epoch == 1
    assert len(reg.promotions()) == 1


def test_registry_racing_promotions_one_winner(tmp_path: Path, fitted, url: str):
    """Ten threads promote ten versions from the same epoch at once: one switch, nine conflicts."""
    reg = _registry(tmp_path, url)
    versions = [_create(reg, fitted, n) for n in range(10)]
    for version in versions:
        _evaluated(reg, version)
    start = reg.pointer().epoch
    barrier = threading.Barrier(len(versions))
    outcomes: dict[str, str] = {}

    def promote(version: str) -> None:
        barrier.wait()
        try:
            reg.promote(version, expected_epoch=start)
            outcomes[version] = "won"
        except PromotionConflictError:
            outcomes[version] = "conflict"

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [v for v, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == 10 and len(winners) == 1, outcomes
    assert reg.pointer() == reg.pointer().__class__(winners[0], start + 1, reg.pointer().promoted_at)


def test_registry_rollback_serves_earlier_version(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    v1, v2 = _create(reg, fitted, 0), _create(reg, fitted, 1)
    _evaluated(reg, v1, recall=0.96)
    _evaluated(reg, v2, recall=0.99)
    reg.promote(v1)
    reg.promote(v2)

    assert reg.promote(v1) == v2
    assert reg.served_version() == v1 and reg.pointer().epoch == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["recall"] == 0.96
    assert (tmp_path / "model.joblib").read_bytes() == (
        tmp_path / "models" / v1 / "model.joblib"
    ).read_bytes()


def test_registry_write_metrics_of_served_version_updates_mirror(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    v1 = _create(reg, fitted)
    _evaluated(reg, v1, recall=0.96)
    reg.promote(v1)
    _evaluated(reg, v1, recall=0.98)  # re-evaluation of the served version: a second evaluation row
    assert json.loads((tmp_path / "metrics.json").read_text())["recall"] == 0.98
    assert reg.read_metrics(v1)["recall"] == 0.98
    (row,) = sql(url, "SELECT count(*) AS n FROM registry_evaluations")
    assert row["n"] == 2


def test_registry_publish_report_under_a_new_key_each_time(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    version = _create(reg, fitted)
    _evaluated(reg, version)
    first = reg.publish_report(version, {"report.html": b"<p>one</p>"})
    second = reg.publish_report(version, {"report.html": b"<p>two</p>"})
    assert first["prefix"] != second["prefix"] and first["prefix"].startswith(f"{version}/reports/")
    assert reg.read_report_file(version, "report.html") == b"<p>two</p>"
    assert (tmp_path / "models" / first["prefix"] / "report.html").read_bytes() == b"<p>one</p>"  # unchanged
    (tmp_path / "models" / second["prefix"] / "report.html").write_bytes(b"<p>changed</p>")
    with pytest.raises(ArtifactIntegrityError, match="integrity check"):
        reg.read_report_file(version, "report.html")


def test_registry_recover_removes_unpublished_files_and_resyncs_mirrors(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    v1, v2 = _create(reg, fitted, 0), _create(reg, fitted, 1)
    _evaluated(reg, v1)
    _evaluated(reg, v2)
    reg.promote(v2)
    # a trainer killed while uploading: some files of a version that has no row, one half written
    unpublished = new_version_name("killed")
    reg.store.put_new(f"{unpublished}/model.json", b"{}")
    (tmp_path / "models" / unpublished / ".tmp-model.joblib.x1").write_bytes(b"partial")
    half = tmp_path / "models" / new_version_name("killed-early")
    half.mkdir()
    (half / ".tmp-model.json.x2").write_bytes(b"partial")
    (tmp_path / ".tmp-metrics.json.x3").write_text("{")
    (tmp_path / "model.joblib").write_bytes(b"stale mirror from an interrupted promotion")
    (tmp_path / "metrics.json").unlink()

    removed = reg.recover()

    assert sorted(removed) == sorted([str(tmp_path / ".tmp-metrics.json.x3"), unpublished, half.name])
    assert _leftovers(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted([v1, v2])
    assert reg.versions() == [v1, v2]
    v2_dir = tmp_path / "models" / v2
    assert (tmp_path / "model.joblib").read_bytes() == (v2_dir / "model.joblib").read_bytes()
    assert json.loads((tmp_path / "metrics.json").read_text()) == reg.read_metrics(v2)
    assert reg.recover() == []  # idempotent


def test_registry_recover_resyncs_metrics_mirror_after_crash_between_copies(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    v1, v2 = _create(reg, fitted, 0), _create(reg, fitted, 1)
    _evaluated(reg, v1, recall=0.96)
    _evaluated(reg, v2, recall=0.99)
    reg.promote(v1)
    v1_metrics = (tmp_path / "metrics.json").read_bytes()
    reg.promote(v2)
    # a crash inside the mirror step: model.joblib already copied, metrics.json still the old version's
    (tmp_path / "metrics.json").write_bytes(v1_metrics)

    reg.recover()

    assert json.loads((tmp_path / "metrics.json").read_text())["recall"] == 0.99


def test_registry_training_lock_second_acquirer_gets_error(tmp_path: Path, url: str):
    reg = _registry(tmp_path, url)
    with (
        reg.training_lock(),
        pytest.raises(TrainingInProgressError, match="a training is already running"),
        _registry(tmp_path, url).training_lock(),
    ):
        pass
    with reg.training_lock():  # released: can be taken again
        pass


def test_registry_training_lock_excludes_other_processes(tmp_path: Path, url: str):
    code = (
        "import sys; from pathlib import Path; from etl.registry import Registry\n"
        "from etl.errors import TrainingInProgressError\n"
        "r = Registry(Path(sys.argv[1]), registry_url=sys.argv[2])\n"
        "try:\n    with r.training_lock(): print('acquired')\n"
        "except TrainingInProgressError as e: print('busy:', e)\n"
    )
    reg = _registry(tmp_path, url)
    run = [sys.executable, "-c", code, str(tmp_path), url]
    with reg.training_lock():
        held = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    free = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert held.stdout.startswith("busy: a training is already running"), held.stderr
    assert free.stdout.strip() == "acquired", free.stderr


def test_registry_versions_in_the_same_second_keep_creation_order(tmp_path: Path, fitted, url: str):
    reg = _registry(tmp_path, url)
    first, second = "20250601T120000Z-ffffffff", "20250601T120000Z-00000000"  # hash order is the reverse
    reg.create_version(first, fitted[0], {"threshold": 0.5})
    reg.create_version(second, fitted[0], {"threshold": 0.5})
    assert reg.versions() == [first, second]
    assert reg.latest_version() == second  # POST /evaluate's default is the one trained last
