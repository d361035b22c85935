"""Import an on-disk registry of the earlier layout (before the registry database) into a registry:
``python -m etl registry import [--from RESULTS_DIR]``.

The earlier layout, under a results folder::

    models/<version>/meta.json        metadata, sha256 of every file, model.json's signature, Drive state,
                                      upload records
    models/<version>/metrics.json     the evaluation (metrics and the gate's verdict), once evaluated
    models/<version>/<files>          model.json, model.joblib, holdout.csv, nested.csv, nested_models.json,
                                      report.html and report/<figure>.png
    current.json                      {"version": ...}: the served version
    reference/reference.csv, .json    the pinned reference set

Each version's files go to the artifact store under the same names (nothing is copied when the store is that
same folder, the default), then its row, its evaluation (with its report) and its Drive and upload state go
to the database; the served version becomes the pointer (epoch 1) if nothing was promoted in the registry
yet; the reference set is pinned if the registry has none. Versions already in the registry are left as they
are, so the import can run again (after an interruption, or to pick up what it refused). The folder itself is
not changed. Digests and signatures are imported as recorded, never recomputed: a file damaged or altered on
disk is imported as it is and keeps failing its checks.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etl.errors import ArtifactIntegrityError, TrainingInProgressError
from etl.hashing import sha256_file

if TYPE_CHECKING:
    from etl.registry import Registry

log = logging.getLogger(__name__)

LEGACY_POINTER = "current.json"
LEGACY_REFERENCE = ("reference", "reference.csv", "reference.json")
REPORT_FILE, FIGURE_DIR = "report.html", "report/"


@dataclass
class ImportResult:
    """What an import did: versions imported, already there, refused (with why), the pointer, the
    reference set."""

    source: str
    imported: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    damaged: dict[str, list[str]] = field(default_factory=dict)
    served: str | None = None
    pointer: str = "unchanged"
    reference: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def legacy_versions(source: Path) -> list[str]:
    """The versions of the earlier layout in ``source``, oldest first (as that layout ordered them)."""
    from etl.registry import is_version

    models = source / "models"
    if not models.is_dir():
        return []
    found = []
    for folder in models.iterdir():
        if is_version(folder.name) and (folder / "meta.json").is_file():
            meta = _read_json(folder / "meta.json")
            created = meta.get("created_ns", 0) if isinstance(meta, dict) else 0
            found.append((folder.name[:16], created if isinstance(created, int) else 0, folder.name))
    return [name for _, _, name in sorted(found)]


def has_legacy(source: Path) -> bool:
    """Whether ``source`` holds a registry of the earlier layout (versions or a pinned reference set)."""
    return bool(legacy_versions(source)) or (source.joinpath(*LEGACY_REFERENCE[::2])).is_file()


def import_if_legacy(registry: Registry) -> ImportResult | None:
    """The default configuration's automatic import: when the registry has no version yet and its results
    folder holds the earlier layout."""
    if not has_legacy(registry.root) or registry.db.version_order():
        return None
    try:
        result = import_registry(registry, registry.root)
    except TrainingInProgressError:  # another process of this host is importing it
        log.info("another process is importing the on-disk registry")
        return None
    log.warning(
        "imported the on-disk registry in %s into the registry database: %d version(s), %d refused, "
        "served %s; the database is the registry from now on",
        registry.root,
        len(result.imported),
        len(result.refused),
        result.served,
    )
    return result


def import_registry(registry: Registry, source: Path) -> ImportResult:
    """Import the earlier layout in ``source`` into ``registry`` (see the module docstring).

    Raises:
        TrainingInProgressError: a training holds the lease (the import waits for no one: run it again).
        ArtifactStoreError, DatabaseUnavailableError: a store could not be reached.
    """
    source = Path(source)
    result = ImportResult(str(source))
    with registry.training_lock() as lease:
        known = set(registry.versions())
        for version in legacy_versions(source):
            if version in known:
                result.already.append(version)
                continue
            why = _import_version(registry, source / "models" / version, version, lease, result)
            if why:
                result.refused[version] = why
                log.error("import: version %s refused: %s", version, why)
            else:
                result.imported.append(version)
        _import_pointer(registry, source, result)
    _import_reference(registry, source, result)
    return result


def _import_version(registry: Registry, vdir: Path, version: str, lease: Any, result: ImportResult) -> str:
    """Import one version; returns why it was refused, or "" when imported."""
    from etl.registry import MUTABLE_META, REQUIRED_FILES

    meta = _read_json(vdir / "meta.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return "meta.json is not a registry version's metadata"
    if not isinstance(meta.get("model_signature"), str):
        return "meta.json has no model.json signature"
    recorded = {str(k): str(v) for k, v in meta["files"].items()}
    report = {k: v for k, v in recorded.items() if k == REPORT_FILE or k.startswith(FIGURE_DIR)}
    files = {k: v for k, v in recorded.items() if k not in report}
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        return f"its metadata names no {', '.join(missing)}"
    damaged = []
    for name, expected in {**files, **report}.items():
        path = vdir / name
        if not path.is_file():
            damaged.append(f"{name} missing")
            continue
        if sha256_file(path) != expected:
            damaged.append(f"{name} changed")
        key = f"{version}/{name}"
        if registry.store.exists(key):
            if registry.store.sha256(key) != sha256_file(path):
                return f"the artifact store already holds a different {key}"
            continue
        registry.store.put_new_file(key, path)
    if damaged:  # imported as recorded: they go on failing their checks, as they did on disk
        result.damaged[version] = damaged
        log.warning("import: version %s has damaged files (%s): they will not verify", version, damaged)
    created_ns = meta.get("created_ns")
    if not isinstance(created_ns, int):
        created_ns = _iso_ns(meta.get("created_at")) or 0
    state = {k: meta[k] for k in MUTABLE_META if k in meta}
    training_meta = {
        k: v
        for k, v in meta.items()
        if k not in ("version", "created_at", "created_ns", "files", "model_signature", *MUTABLE_META)
    }
    registry.db.insert_version(
        {
            "version": version,
            "created_ns": created_ns,
            "created_at": str(meta.get("created_at") or ""),
            "meta": training_meta,
            "files": files,
            "model_signature": meta["model_signature"],
            "fingerprint": meta.get("fingerprint"),
            "status": "trained",
            "state": state,
            "lease_generation": None,
        },
        lease.fence,
    )
    metrics = _read_json(vdir / "metrics.json")
    if isinstance(metrics, dict):
        evaluation_id = registry.db.add_evaluation(version, metrics)
        if report and all((vdir / name).is_file() for name in report):
            # the report's files keep their names, so its prefix is the version's own
            registry.db.set_report(evaluation_id, {"prefix": version, "files": report})
    return ""


def _iso_ns(value: object) -> int | None:
    try:
        return int(datetime.fromisoformat(str(value)).timestamp() * 1e9)
    except ValueError:
        return None


def _import_pointer(registry: Registry, source: Path, result: ImportResult) -> None:
    pointer = _read_json(source / LEGACY_POINTER)
    served = pointer.get("version") if isinstance(pointer, dict) else None
    if not isinstance(served, str) or served not in set(registry.versions()):
        return
    result.served = served
    promoted = _iso_ns(pointer.get("promoted_at")) if isinstance(pointer, dict) else None
    if registry.db.set_pointer_if_unset(served, promoted / 1e9 if promoted else None):
        result.pointer = f"set to {served} (epoch 1)"
    else:
        result.pointer = f"kept: the registry already served {registry.served_version()}"


def _import_reference(registry: Registry, source: Path, result: ImportResult) -> None:
    folder, csv_name, pin_name = LEGACY_REFERENCE
    pin = _read_json(source / folder / pin_name)
    csv_path = source / folder / csv_name
    if not isinstance(pin, dict) or not csv_path.is_file():
        return
    data = csv_path.read_bytes()
    current = registry.reference_pin()
    if current is not None:
        result.reference = (
            "already pinned" if current["sha256"] == pin.get("sha256") else "kept the registry's own"
        )
        return
    from etl.hashing import sha256_bytes

    if sha256_bytes(data) != pin.get("sha256"):
        result.reference = "refused: reference.csv does not match the sha256 pinned in reference.json"
        log.error("import: %s", result.reference)
        return
    try:
        registry.pin_reference(data, int(pin.get("rows") or 0), str(pin.get("source") or "imported"))
    except ArtifactIntegrityError as exc:
        result.reference = f"refused: {exc}"
        return
    result.reference = "imported"
