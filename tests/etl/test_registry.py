"""etl.registry: versions on disk, atomic writes, signed model.json (nothing unpickled), promotion, recovery,
locks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

import etl.atomic
from etl.errors import (
    ArtifactIntegrityError,
    ModelNotFoundError,
    NoServedModelError,
    NotEvaluatedError,
    NotServableError,
    TrainingInProgressError,
)
from etl.registry import VERSION_RE, Registry, new_version_name
from etl.scorer import LinearModel
from etl.signing import sign
from tests.conftest import ROOT
from tests.pipeline_support import fitted_version_files

KEY = b"k" * 32

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], pd.DataFrame]:
    return fitted_version_files(tmp_path_factory.mktemp("data"))


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


def test_registry_create_version_writes_complete_folder(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
    version = _create(reg, fitted, data_sha256="d" * 64)
    vdir = tmp_path / "models" / version
    assert sorted(p.name for p in vdir.iterdir()) == [
        "holdout.csv",
        "meta.json",
        "model.joblib",
        "model.json",
    ]
    meta = json.loads((vdir / "meta.json").read_text())
    assert meta["version"] == version and meta["threshold"] == 0.5 and meta["data_sha256"] == "d" * 64
    for name in ("model.json", "model.joblib", "holdout.csv"):
        assert meta["files"][name] == hashlib.sha256((vdir / name).read_bytes()).hexdigest()
    assert meta["model_signature"] == sign(KEY, (vdir / "model.json").read_bytes())
    assert meta["created_at"]
    pd.testing.assert_frame_equal(reg.load_holdout(version), fitted[1].reset_index(drop=True))
    assert _leftovers(tmp_path) == []
    assert reg.served_version() is None and reg.status(version) == "trained"


def test_registry_versions_oldest_first_and_latest(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
    assert reg.versions() == []
    with pytest.raises(ModelNotFoundError, match="no model has been trained yet"):
        reg.latest_version()
    late = _create(reg, fitted, minutes=10)
    early = _create(reg, fitted, minutes=0)
    middle = _create(reg, fitted, minutes=5)
    (tmp_path / "models" / ".tmp-20250601T130000Z-00000000").mkdir()  # staging folder: not a version
    (tmp_path / "models" / "20250601T140000Z-11111111").mkdir()  # no meta.json: not a version
    assert reg.versions() == [early, middle, late]
    assert reg.latest_version() == late


@pytest.mark.parametrize("name", ["nope", "../etc", "20250601T120000Z-deadbeef", ""])
def test_registry_version_dir_unknown_or_malformed_raises_not_found(tmp_path: Path, name: str):
    with pytest.raises(ModelNotFoundError) as err:
        Registry(tmp_path, KEY).version_dir(name)
    assert "python -m etl models" in str(err.value) or "does not exist" in str(err.value)


def test_registry_create_version_crash_leaves_no_version(
    tmp_path: Path, fitted, monkeypatch: pytest.MonkeyPatch
):
    reg = Registry(tmp_path, KEY)

    def crash(*args: object, **kwargs: object) -> None:
        Path(str(args[0])).write_bytes(b"{half a meta")
        raise OSError("disk full")

    monkeypatch.setattr(etl.atomic, "write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        _create(reg, fitted)
    assert reg.versions() == []
    assert list((tmp_path / "models").iterdir()) == []
    assert _leftovers(tmp_path) == []


def test_registry_load_model_reads_the_signed_json(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
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
    tamper(tmp_path / "models" / version / "model.json")
    with pytest.raises(ArtifactIntegrityError) as err:
        reg.load_model(version)
    assert version in str(err.value)


def test_registry_load_model_refuses_a_hash_fixed_up_in_meta_without_the_key(tmp_path: Path, fitted):
    """An attacker who can write results/ recomputes every sha256 in meta.json; without the key, no use."""
    reg = Registry(tmp_path, KEY)
    version = _create(reg, fitted)
    path = tmp_path / "models" / version / "model.json"
    doc = json.loads(path.read_text())
    doc["bias"] = -1000.0  # always "benign"
    path.write_text(json.dumps(doc))
    meta = reg.read_meta(version)
    reg.update_meta(
        version,
        files={**meta["files"], "model.json": hashlib.sha256(path.read_bytes()).hexdigest()},
        model_signature=hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    with pytest.raises(ArtifactIntegrityError, match="signature does not match"):
        reg.load_model(version)
    with pytest.raises(ArtifactIntegrityError, match="signature does not match"):
        Registry(tmp_path, b"another key of thirty-two bytes!").load_model(_create(reg, fitted, 1))


def test_registry_load_model_refuses_a_signed_document_that_is_not_a_model(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
    version = _create(reg, fitted)
    path = tmp_path / "models" / version / "model.json"
    path.write_text(json.dumps({"format": "pickle", "payload": "cos\nsystem\n"}))
    reg.update_meta(version, model_signature=sign(KEY, path.read_bytes()))
    with pytest.raises(ArtifactIntegrityError, match="is not a valid model"):
        reg.load_model(version)


def test_registry_without_a_key_refuses_to_register_or_load(tmp_path: Path, fitted):
    version = _create(Registry(tmp_path, KEY), fitted)
    keyless = Registry(tmp_path)
    assert keyless.versions() == [version]
    with pytest.raises(ArtifactIntegrityError, match="without a model-signing key"):
        keyless.load_model(version)


def test_registry_promote_refuses_not_evaluated(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
    version = _create(reg, fitted)
    with pytest.raises(NotEvaluatedError, match="has not been evaluated"):
        reg.promote(version)
    assert reg.served_version() is None
    assert not (tmp_path / "current.json").exists() and not (tmp_path / "model.joblib").exists()


def test_registry_promote_refuses_gate_failed(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
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
    assert reg.served_version() == good
    assert (tmp_path / "model.joblib").read_bytes() == (
        tmp_path / "models" / good / "model.joblib"
    ).read_bytes()


def test_registry_promote_switches_pointer_and_mirrors(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
    with pytest.raises(NoServedModelError, match="no model is served yet"):
        reg.require_served()
    v1, v2 = _create(reg, fitted, 0), _create(reg, fitted, 1)
    _evaluated(reg, v1, recall=0.96)
    _evaluated(reg, v2, recall=0.99)

    assert reg.promote(v1) is None
    assert json.loads((tmp_path / "current.json").read_text())["version"] == v1
    assert reg.promote(v2) == v1
    assert reg.served_version() == v2 == reg.require_served()
    v2_dir = tmp_path / "models" / v2
    assert (tmp_path / "model.joblib").read_bytes() == (v2_dir / "model.joblib").read_bytes()
    assert (tmp_path / "metrics.json").read_bytes() == (v2_dir / "metrics.json").read_bytes()
    assert json.loads((tmp_path / "metrics.json").read_text())["recall"] == 0.99
    assert _leftovers(tmp_path) == []


def test_registry_rollback_serves_earlier_version(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
    v1, v2 = _create(reg, fitted, 0), _create(reg, fitted, 1)
    _evaluated(reg, v1, recall=0.96)
    _evaluated(reg, v2, recall=0.99)
    reg.promote(v1)
    reg.promote(v2)

    assert reg.promote(v1) == v2
    assert reg.served_version() == v1
    assert json.loads((tmp_path / "metrics.json").read_text())["recall"] == 0.96
    assert (tmp_path / "model.joblib").read_bytes() == (
        tmp_path / "models" / v1 / "model.joblib"
    ).read_bytes()


def test_registry_write_metrics_of_served_version_updates_mirror(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
    v1 = _create(reg, fitted)
    _evaluated(reg, v1, recall=0.96)
    reg.promote(v1)
    _evaluated(reg, v1, recall=0.98)  # re-evaluation of the served version
    assert json.loads((tmp_path / "metrics.json").read_text())["recall"] == 0.98


def test_registry_served_version_ignores_garbage_pointer(tmp_path: Path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "current.json").write_text("{not json")
    assert Registry(tmp_path, KEY).served_version() is None
    (tmp_path / "current.json").write_text(json.dumps({"version": "../../etc"}))
    assert Registry(tmp_path, KEY).served_version() is None


def test_registry_recover_removes_leftovers_and_resyncs_mirrors(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
    v1, v2 = _create(reg, fitted, 0), _create(reg, fitted, 1)
    _evaluated(reg, v1)
    _evaluated(reg, v2)
    reg.promote(v2)
    staging = tmp_path / "models" / f".tmp-{v1[:-8]}abcdef01"
    staging.mkdir()
    (staging / "model.joblib").write_bytes(b"partial")
    (tmp_path / "models" / v1 / ".tmp-meta.json.x1").write_text("{")
    (tmp_path / ".tmp-current.json.x2").write_text("{")
    (tmp_path / "model.joblib").write_bytes(b"stale mirror from an interrupted promotion")
    (tmp_path / "metrics.json").unlink()

    removed = reg.recover()

    assert len(removed) == 3
    assert _leftovers(tmp_path) == []
    assert reg.versions() == [v1, v2]
    v2_dir = tmp_path / "models" / v2
    assert (tmp_path / "model.joblib").read_bytes() == (v2_dir / "model.joblib").read_bytes()
    assert (tmp_path / "metrics.json").read_bytes() == (v2_dir / "metrics.json").read_bytes()
    assert reg.recover() == []  # idempotent


def test_registry_training_lock_second_acquirer_gets_error(tmp_path: Path):
    reg = Registry(tmp_path, KEY)
    with (
        reg.training_lock(),
        pytest.raises(TrainingInProgressError, match="a training is already running"),
        Registry(tmp_path, KEY).training_lock(),
    ):
        pass
    with reg.training_lock():  # released: can be taken again
        pass


def test_registry_training_lock_excludes_other_processes(tmp_path: Path):
    code = (
        "import sys; from pathlib import Path; from etl.registry import Registry\n"
        "from etl.errors import TrainingInProgressError\n"
        "try:\n    with Registry(Path(sys.argv[1])).training_lock(): print('acquired')\n"
        "except TrainingInProgressError as e: print('busy:', e)\n"
    )
    reg = Registry(tmp_path, KEY)
    run = [sys.executable, "-c", code, str(tmp_path)]
    with reg.training_lock():
        held = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    free = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert held.stdout.startswith("busy: a training is already running"), held.stderr
    assert free.stdout.strip() == "acquired", free.stderr


def test_registry_recover_resyncs_metrics_mirror_after_crash_between_copies(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
    v1, v2 = _create(reg, fitted, 0), _create(reg, fitted, 1)
    _evaluated(reg, v1, recall=0.96)
    _evaluated(reg, v2, recall=0.99)
    reg.promote(v1)
    v1_metrics = (tmp_path / "metrics.json").read_bytes()
    reg.promote(v2)
    # a crash inside the mirror step: model.joblib already copied, metrics.json still the old version's
    (tmp_path / "metrics.json").write_bytes(v1_metrics)

    reg.recover()

    assert (tmp_path / "metrics.json").read_bytes() == (
        tmp_path / "models" / v2 / "metrics.json"
    ).read_bytes()


def test_registry_versions_in_the_same_second_keep_creation_order(tmp_path: Path, fitted):
    reg = Registry(tmp_path, KEY)
    first, second = "20250601T120000Z-ffffffff", "20250601T120000Z-00000000"  # hash order is the reverse
    reg.create_version(first, fitted[0], {"threshold": 0.5})
    reg.create_version(second, fitted[0], {"threshold": 0.5})
    assert reg.versions() == [first, second]
    assert reg.latest_version() == second  # POST /evaluate's default is the one trained last
