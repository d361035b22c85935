"""Importing an on-disk registry of the earlier layout (etl/registry_import.py): every version, its files,
metrics, gate verdict, report, Drive state and upload records, the served pointer and the reference set come
across unchanged, into SQLite or PostgreSQL; the import runs again without changing anything; a damaged file
is imported as it is and goes on failing its checks; the default setup imports by itself."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from etl.artifacts import ArtifactStore
from etl.errors import ArtifactIntegrityError, ArtifactStoreError
from etl.reference import load_reference
from etl.registry import Registry
from etl.registry_import import import_registry
from etl.report import read_report
from etl.scorer import LinearModel
from etl.signing import sign
from tests.pipeline_support import bundled_complete_rows, fitted_version_files
from tests.registry_support import sql

KEY = b"k" * 32
V1, V2, V3 = "20250601T120000Z-aaaaaaaa", "20250602T120000Z-bbbbbbbb", "20250603T120000Z-cccccccc"
DRIVE = {
    "parent_folder_id": "1Parent",
    "folder_name": "20250601_130000",
    "folder_id": "1Folder",
    "files": {"model.joblib": {"id": "1File", "size": 10, "md5": "0" * 32}},
    "status": "uploaded",
}
UPLOADS = [
    {
        "timestamp": "20250601_130000",
        "at": "2025-06-01T13:00:01+00:00",
        "backup_dir": "/srv/upload/20250601_130000",
        "drive_status": "uploaded",
        "drive_folder_id": "1Folder",
    }
]


@dataclass
class Legacy:
    results: Path
    meta: dict[str, dict[str, Any]]
    metrics: dict[str, dict[str, Any]]
    reference: bytes


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def legacy_registry(results: Path, files: dict[str, bytes]) -> Legacy:
    """A results folder as the registry before the database wrote it: V1 evaluated, passed, reported,
    uploaded and served; V2 evaluated and rejected; V3 trained only; the reference set pinned."""
    metas, metrics = {}, {}
    for n, version in enumerate((V1, V2, V3)):
        vdir = results / "models" / version
        (vdir / "report").mkdir(parents=True)
        own = {**files, "holdout.csv": files["holdout.csv"] + f"# {version}\n".encode()}
        for name, data in own.items():
            (vdir / name).write_bytes(data)
        digests = {name: _sha(data) for name, data in own.items()}
        if version == V1:
            reports = {"report.html": b"<!DOCTYPE html><p>V1</p>", "report/roc.png": b"\x89PNG roc"}
            for name, data in reports.items():
                (vdir / name).write_bytes(data)
            digests |= {name: _sha(data) for name, data in reports.items()}
        meta: dict[str, Any] = {
            "threshold": 0.5,
            "fingerprint": f"{n}" * 64,
            "data_sha256": "d" * 64,
            "rows": {"train": 400 + n},
            "version": version,
            "created_at": f"2025-06-0{n + 1}T12:00:00+00:00",
            "created_ns": 1748779200 * 10**9 + n,
            "files": digests,
            "model_signature": sign(KEY, own["model.json"]),
        }
        if version == V1:
            meta |= {"drive": DRIVE, "uploads": UPLOADS}
        _json(vdir / "meta.json", meta)
        metas[version] = meta
        if version != V3:
            passed = version == V1
            metrics[version] = {
                "recall": 0.97 - n / 100,
                "quality_gate": {"passed": passed, "reasons": [] if passed else ["recall FAILED"]},
            }
            _json(vdir / "metrics.json", metrics[version])
    _json(results / "current.json", {"version": V1, "promoted_at": "2025-06-01T12:30:00+00:00"})
    (results / "model.joblib").write_bytes(files["model.joblib"])
    reference = bundled_complete_rows().head(40).to_csv(index=False).encode()
    (results / "reference").mkdir()
    (results / "reference" / "reference.csv").write_bytes(reference)
    _json(
        results / "reference" / "reference.json",
        {"sha256": _sha(reference), "rows": 40, "source": "set from mine.csv", "pinned_at": "2025-05-01"},
    )
    return Legacy(results, metas, metrics, reference)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return fitted_version_files(tmp_path_factory.mktemp("fitted"))[0]


@pytest.fixture
def legacy(tmp_path: Path, files: dict[str, bytes]) -> Legacy:
    return legacy_registry(tmp_path / "old" / "results", files)


def _target(tmp_path: Path, url: str) -> Registry:
    return Registry(tmp_path / "new", KEY, registry_url=url, artifact_url=str(tmp_path / "store"))


def _check_everything_came_across(registry: Registry, legacy: Legacy) -> None:
    assert registry.versions() == [V1, V2, V3]
    for version, meta in legacy.meta.items():
        got = registry.read_meta(version)
        reports = {k for k in meta["files"] if k == "report.html" or k.startswith("report/")}
        assert got == {**meta, "files": {k: v for k, v in meta["files"].items() if k not in reports}}
        for name, digest in got["files"].items():
            assert _sha(registry.store.get(f"{version}/{name}")) == digest
        assert registry.read_metrics(version) == legacy.metrics.get(version)
    assert [registry.status(v) for v in (V1, V2, V3)] == ["passed", "rejected", "trained"]
    assert read_report(registry, V1) == b"<!DOCTYPE html><p>V1</p>"
    assert read_report(registry, V1, "roc") == b"\x89PNG roc"
    assert registry.report(V2) is None
    pointer = registry.pointer()
    assert (pointer.version, pointer.epoch) == (V1, 1)
    assert isinstance(registry.load_model(V1), LinearModel)  # the signature, recorded, still verifies
    reference = load_reference(registry)
    assert reference is not None and reference.sha256 == _sha(legacy.reference)
    assert reference.source == "set from mine.csv" and len(reference.frame) == 40


def test_import_registry_brings_everything_across_then_again_changes_nothing(
    tmp_path: Path, legacy: Legacy, database_url: str
) -> None:
    registry = _target(tmp_path, database_url)

    result = import_registry(registry, legacy.results)

    assert result.imported == [V1, V2, V3] and result.refused == {} and result.damaged == {}
    assert (result.served, result.pointer, result.reference) == (V1, f"set to {V1} (epoch 1)", "imported")
    _check_everything_came_across(registry, legacy)

    again = import_registry(registry, legacy.results)

    assert again.imported == [] and again.already == [V1, V2, V3]
    assert again.pointer.startswith("kept") and again.reference == "already pinned"
    _check_everything_came_across(registry, legacy)
    counts = {
        table: sql(database_url, f"SELECT count(*) AS n FROM {table}")[0]["n"]
        for table in (
            "registry_versions",
            "registry_evaluations",
            "registry_promotions",
            "registry_reference",
        )
    }
    assert counts == {
        "registry_versions": 3,
        "registry_evaluations": 2,
        "registry_promotions": 1,
        "registry_reference": 1,
    }


def test_import_registry_interrupted_then_run_again_completes(
    tmp_path: Path, legacy: Legacy, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = _target(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}")
    real = ArtifactStore.put_new_file

    def fail_on_v2(self: ArtifactStore, key: str, source: Path) -> str:
        if key.startswith(V2):
            raise ArtifactStoreError("the store went away", step=f"put_new_file {key}")
        return real(self, key, source)

    with monkeypatch.context() as m:
        m.setattr(ArtifactStore, "put_new_file", fail_on_v2)
        with pytest.raises(ArtifactStoreError):
            import_registry(registry, legacy.results)
    assert registry.versions() == [V1] and registry.served_version() is None

    result = import_registry(registry, legacy.results)

    assert result.imported == [V2, V3] and result.already == [V1]
    _check_everything_came_across(registry, legacy)


def test_import_registry_damaged_file_is_imported_as_recorded_and_still_refused(
    tmp_path: Path, legacy: Legacy
) -> None:
    model = legacy.results / "models" / V2 / "model.json"
    doc = json.loads(model.read_text())
    doc["bias"] = -1e6
    model.write_text(json.dumps(doc))  # changed on disk after training, before the import
    registry = _target(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}")

    result = import_registry(registry, legacy.results)

    assert result.imported == [V1, V2, V3] and result.damaged == {V2: ["model.json changed"]}
    with pytest.raises(ArtifactIntegrityError, match="signature does not match"):
        registry.load_model(V2)
    assert registry.read_meta(V2)["files"]["model.json"] == legacy.meta[V2]["files"]["model.json"]


def test_import_registry_default_setup_imports_by_itself_in_place(tmp_path: Path, legacy: Legacy) -> None:
    """A single machine upgraded in place: its results folder is the registry's; the first use of the
    registry imports it, and the files stay where they are (the artifact folder is results/models)."""
    before = {p: p.read_bytes() for p in (legacy.results / "models").rglob("*") if p.is_file()}
    registry = Registry(legacy.results, KEY)

    assert registry.served_version() == V1
    _check_everything_came_across(registry, legacy)
    reference_key = registry.reference_pin()["key"]  # type: ignore[index]
    after = {p: p.read_bytes() for p in (legacy.results / "models").rglob("*") if p.is_file()}
    assert {p: b for p, b in after.items() if p in before} == before  # nothing changed or moved
    assert sorted(str(p.relative_to(legacy.results / "models")) for p in set(after) - set(before)) == [
        reference_key
    ]
    assert registry.recover() == []  # the earlier versions are the registry's: nothing is garbage


def test_cli_registry_import_from_a_folder_and_show(tmp_path: Path, legacy: Legacy, etl_cli) -> None:
    env = {
        "RESULTS_DIR": str(tmp_path / "new"),
        "REGISTRY_URL": f"sqlite:///{tmp_path / 'db' / 'registry.db'}",
        "ARTIFACT_URL": str(tmp_path / "store"),
        "MODEL_SIGNING_KEY": KEY.decode(),
    }

    def cli(*args: str) -> tuple[int, dict[str, Any], str]:
        ran = etl_cli(tmp_path, "registry", *args, **env)
        return ran.returncode, json.loads(ran.stdout or "{}"), ran.stderr

    code, out, err = cli("import", "--from", str(legacy.results))
    assert code == 0, err
    assert out["imported"] == [V1, V2, V3] and out["served"] == V1 and out["reference"] == "imported"
    code, out, err = cli("import", "--from", str(legacy.results))
    assert code == 0 and out["imported"] == [] and out["already"] == [V1, V2, V3], err
    code, out, err = cli("show")
    assert code == 0, err
    assert (out["served_version"], out["epoch"], out["versions"]) == (V1, 1, 3)
    assert out["training_lease"]["held"] is False
    assert out["registry"].startswith("sqlite:///") and out["artifacts"] == "the local artifact folder"
    assert pd.read_csv(tmp_path / "store" / "reference" / f"{_sha(legacy.reference)}.csv").shape == (40, 11)
