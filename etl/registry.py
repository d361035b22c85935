"""Model versions on disk: writing them whole, checking their integrity, the pointer to the served one.

Layout under RESULTS_DIR::

    models/<version>/model.json           the served model as plain data (weights, calibration, threshold)
    models/<version>/model.joblib         the same model as a scikit-learn object, for people to download
    models/<version>/meta.json            parameters, nested estimates, sha256 of every file, the signature
    models/<version>/holdout.csv          the version's held-out rows
    models/<version>/nested.csv           the nested-CV predictions (one row per outer fold and row)
    models/<version>/nested_models.json   the nested-CV fold models (their disagreement is the gate's noise)
    models/<version>/metrics.json         after evaluation: metrics and the quality-gate verdict
    reference/reference.csv, .json        the pinned reference set (etl/reference.py)
    current.json                          {"version": ...}: the served version (switched by an atomic rename)
    model.joblib, metrics.json            copies of the served version's files (the seed's paths)

A version folder is built under ``models/.tmp-<version>-...`` and renamed into place only when complete
(etl/atomic.py), so a crash never leaves a half-written version that looks real. Nothing here unpickles: the
service loads ``model.json``, checked against its HMAC signature (etl/signing.py) before it is parsed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from etl import atomic
from etl.atomic import read_json
from etl.errors import (
    ArtifactIntegrityError,
    ModelNotFoundError,
    NoServedModelError,
    NotEvaluatedError,
    NotServableError,
    TrainingInProgressError,
)
from etl.hashing import sha256_bytes, sha256_file
from etl.locks import LockBusyError, file_lock
from etl.scorer import LinearModel
from etl.signing import sign, verify

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")  # use fullmatch: `$` would take a trailing newline
MODEL_JSON, MODEL_FILE, META_FILE, METRICS_FILE = "model.json", "model.joblib", "meta.json", "metrics.json"
HOLDOUT_FILE, NESTED_FILE, NESTED_MODELS_FILE = "holdout.csv", "nested.csv", "nested_models.json"
REQUIRED_FILES = (MODEL_JSON, MODEL_FILE, HOLDOUT_FILE)


def new_version_name(salt: str, now: datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex>``: sortable by time, unique through the hash of salt and clock."""
    now = now or datetime.now(UTC)
    digest = sha256_bytes(f"{salt}:{time.time_ns()}:{os.getpid()}".encode())[:8]
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{digest}"


def is_version(name: object) -> bool:
    return isinstance(name, str) and VERSION_RE.fullmatch(name) is not None


def gate_passed(metrics: dict[str, Any] | None) -> bool:
    """Whether a version's metrics.json records a passed quality gate."""
    return bool(metrics and (metrics.get("quality_gate") or {}).get("passed"))


def status_of(metrics: dict[str, Any] | None) -> str:
    """A version's status from its metrics.json: ``trained`` (none yet), ``passed`` or ``rejected``."""
    if metrics is None:
        return "trained"
    return "passed" if gate_passed(metrics) else "rejected"


class Registry:
    """The model registry rooted at ``results_dir``; ``signing_key`` signs and checks ``model.json`` (reading
    the pointer, listing and promoting need no key; registering and loading a model do)."""

    def __init__(self, results_dir: Path, signing_key: bytes | None = None) -> None:
        self.root = Path(results_dir)
        self.models_dir = self.root / "models"
        self.pointer = self.root / "current.json"
        self._key = signing_key

    def _signing_key(self) -> bytes:
        if self._key is None:
            raise ArtifactIntegrityError("this registry was opened without a model-signing key")
        return self._key

    # -- names and paths -------------------------------------------------------------------------
    def version_dir(self, version: str) -> Path:
        """The folder of an existing version.

        Raises:
            ModelNotFoundError: the name is malformed or no such version exists.
        """
        if not is_version(version):
            raise ModelNotFoundError(
                f"{version!r} is not a model version (expected YYYYMMDDTHHMMSSZ-xxxxxxxx; list them with "
                "`python -m etl models`)"
            )
        path = self.models_dir / version
        if not (path / META_FILE).is_file():
            raise ModelNotFoundError(f"model version {version} does not exist")
        return path

    def versions(self) -> list[str]:
        """Every complete version, oldest first (names from the same second ordered by creation time)."""
        if not self.models_dir.is_dir():
            return []
        names = [
            p.name for p in self.models_dir.iterdir() if is_version(p.name) and (p / META_FILE).is_file()
        ]
        return sorted(names, key=lambda n: (n[:16], self._created_ns(n), n))

    def _created_ns(self, version: str) -> int:
        try:
            return int(read_json(self.models_dir / version / META_FILE).get("created_ns", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            return 0

    def latest_version(self) -> str:
        versions = self.versions()
        if not versions:
            raise ModelNotFoundError("no model has been trained yet: train one first")
        return versions[-1]

    def find_fingerprint(self, fingerprint: str) -> str | None:
        """The newest version trained from the same data, settings and libraries, if any."""
        for version in reversed(self.versions()):
            if self.read_meta(version).get("fingerprint") == fingerprint:
                return version
        return None

    # -- locks -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def training_lock(self) -> Iterator[None]:
        """Held for a whole training; a second trainer (thread or process) gets TrainingInProgressError."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(file_lock(self.root / ".train.lock", blocking=False))
            except LockBusyError:
                raise TrainingInProgressError(
                    "a training is already running; wait for it to finish and try again"
                ) from None
            yield

    def write_lock(self) -> contextlib.AbstractContextManager[None]:
        """Serialises promotions and meta.json rewrites across threads and processes."""
        return file_lock(self.root / ".registry.lock")

    # -- writing a version -----------------------------------------------------------------------
    def create_version(self, version: str, files: dict[str, bytes], meta: dict[str, Any]) -> Path:
        """Write a complete version folder atomically and return its path.

        ``files`` must hold model.json, model.joblib and holdout.csv (nested.csv and nested_models.json are
        optional). ``meta`` gets ``version``, ``created_at``, the sha256 of every file and the signature of
        model.json added.
        """
        if not is_version(version):
            raise ValueError(f"bad version name {version!r}")
        missing = [name for name in REQUIRED_FILES if name not in files]
        if missing:
            raise ValueError(f"a version needs {missing}")
        with atomic.staging_folder(self.models_dir, version) as staging:
            for name, data in files.items():
                (staging / name).write_bytes(data)
            meta = {
                **meta,
                "version": version,
                "created_at": meta.get("created_at") or datetime.now(UTC).isoformat(timespec="seconds"),
                "created_ns": time.time_ns(),
                "files": {name: sha256_bytes(data) for name, data in files.items()},
                "model_signature": sign(self._signing_key(), files[MODEL_JSON]),
            }
            atomic.write_json(staging / META_FILE, meta)
            final = self.models_dir / version
            atomic.publish_folder(staging, final)
        log.info(
            "registered version %s (model.json signed, sha256 %s)", version, meta["files"][MODEL_JSON][:12]
        )
        return final

    def read_meta(self, version: str) -> dict[str, Any]:
        meta: dict[str, Any] = read_json(self.version_dir(version) / META_FILE)
        return meta

    def update_meta(self, version: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into meta.json (atomic rewrite under the write lock) and return the result."""
        with self.write_lock():
            meta = self.read_meta(version)
            meta.update(fields)
            atomic.write_json(self.version_dir(version) / META_FILE, meta)
        return meta

    def read_metrics(self, version: str) -> dict[str, Any] | None:
        path = self.version_dir(version) / METRICS_FILE
        if not path.is_file():
            return None
        metrics: dict[str, Any] = read_json(path)
        return metrics

    def write_metrics(self, version: str, metrics: dict[str, Any]) -> None:
        atomic.write_json(self.version_dir(version) / METRICS_FILE, metrics)
        if version == self.served_version():  # keep results/metrics.json mirroring the served version
            with self.write_lock():
                atomic.copy_file(self.version_dir(version) / METRICS_FILE, self.root / METRICS_FILE)

    # -- reading a version -----------------------------------------------------------------------
    def _verified_bytes(self, version: str, name: str, meta: dict[str, Any]) -> bytes:
        try:
            data = (self.version_dir(version) / name).read_bytes()
        except FileNotFoundError:
            raise ArtifactIntegrityError(f"version {version} has no {name}") from None
        expected = (meta.get("files") or {}).get(name)
        actual = sha256_bytes(data)
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{name} of version {version} fails its integrity check: sha256 {actual[:12]}... does not "
                f"match {str(expected)[:12]}... recorded at training; it was changed or damaged, so it will "
                "not be used"
            )
        return data

    def load_model(self, version: str) -> LinearModel:
        """The version's model from ``model.json``, read once and used only if its signature verifies.

        Raises:
            ArtifactIntegrityError: missing, not signed with this MODEL_SIGNING_KEY, or not a valid model.
        """
        meta = self.read_meta(version)
        try:
            data = (self.version_dir(version) / MODEL_JSON).read_bytes()
        except FileNotFoundError:
            raise ArtifactIntegrityError(f"version {version} has no {MODEL_JSON}") from None
        if not verify(self._signing_key(), data, meta.get("model_signature")):
            raise ArtifactIntegrityError(
                f"{MODEL_JSON} of version {version} fails its integrity check: its signature does not match "
                "(changed after training, or signed with another MODEL_SIGNING_KEY), so it will not be loaded"
            )
        try:
            document = json.loads(data)
        except ValueError:
            raise ArtifactIntegrityError(f"{MODEL_JSON} of version {version} is not JSON") from None
        return LinearModel.from_dict(document)

    def verify(self, version: str) -> dict[str, Any]:
        """Check model.json's signature and model.joblib's sha256; return meta.

        Raises:
            ArtifactIntegrityError: a file is missing or its bytes changed since training.
        """
        self.load_model(version)
        meta = self.read_meta(version)
        self._verified_bytes(version, MODEL_FILE, meta)
        return meta

    def load_holdout(self, version: str) -> pd.DataFrame:
        return self._read_csv(version, HOLDOUT_FILE)

    def load_nested(self, version: str) -> pd.DataFrame | None:
        """The nested-CV predictions (``NestedCV.pooled()`` as trained), or None for older versions."""
        if not (self.version_dir(version) / NESTED_FILE).is_file():
            return None
        return self._read_csv(version, NESTED_FILE)

    def load_nested_models(self, version: str) -> list[LinearModel]:
        if not (self.version_dir(version) / NESTED_MODELS_FILE).is_file():
            return []
        data = self._verified_bytes(version, NESTED_MODELS_FILE, self.read_meta(version))
        try:
            documents = json.loads(data)
        except ValueError:
            raise ArtifactIntegrityError(f"{NESTED_MODELS_FILE} of version {version} is not JSON") from None
        if not isinstance(documents, list):
            raise ArtifactIntegrityError(f"{NESTED_MODELS_FILE} of version {version} is not a list")
        return [LinearModel.from_dict(d) for d in documents]

    def _read_csv(self, version: str, name: str) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(self._verified_bytes(version, name, self.read_meta(version))))

    # -- serving ---------------------------------------------------------------------------------
    def served_version(self) -> str | None:
        try:
            version = read_json(self.pointer).get("version")
        except (FileNotFoundError, ValueError, AttributeError):
            return None
        return version if is_version(version) else None

    def last_promotion_time(self) -> float | None:
        """Unix time the served pointer last switched (its file's mtime), or None."""
        try:
            return self.pointer.stat().st_mtime if self.served_version() else None
        except FileNotFoundError:
            return None

    def last_training_time(self) -> float | None:
        """Unix time the newest version was registered, or None."""
        versions = self.versions()
        if not versions:
            return None
        created_ns = self.read_meta(versions[-1]).get("created_ns")
        return created_ns / 1e9 if isinstance(created_ns, int) else None

    def require_served(self) -> str:
        version = self.served_version()
        if version is None:
            raise NoServedModelError()
        return version

    def status(self, version: str) -> str:
        return status_of(self.read_metrics(version))

    def promote(self, version: str) -> str | None:
        """Make ``version`` the served one; return the previously served version.

        Raises:
            NotEvaluatedError / NotServableError: not evaluated, or it failed the gate.
            ArtifactIntegrityError: its files fail their integrity checks.
        """
        with self.write_lock():
            metrics = self.read_metrics(version)
            if metrics is None:
                raise NotEvaluatedError(
                    f"version {version} has not been evaluated: evaluate it before promoting"
                )
            if not gate_passed(metrics):
                reasons = "; ".join(metrics.get("quality_gate", {}).get("reasons", [])) or "no verdict"
                raise NotServableError(
                    f"version {version} failed the quality gate and cannot be served: {reasons}"
                )
            self.verify(version)
            previous = self.served_version()
            atomic.write_json(
                self.pointer,
                {"version": version, "promoted_at": datetime.now(UTC).isoformat(timespec="seconds")},
            )
            self._mirror(version)
        log.info("promoted version %s (previously %s)", version, previous)
        return previous

    def _mirror(self, version: str) -> None:
        vdir = self.version_dir(version)
        atomic.copy_file(vdir / MODEL_FILE, self.root / MODEL_FILE)
        atomic.copy_file(vdir / METRICS_FILE, self.root / METRICS_FILE)

    def recover(self) -> list[str]:
        """Clean up after a crash: drop staging folders and temp files, re-sync the served mirrors.

        Returns the paths removed.
        """
        removed: list[Path] = []
        if self.models_dir.is_dir():
            try:
                # a staging folder belongs to a training; if one is running (another process), it is not ours
                with self.training_lock():
                    removed += atomic.remove_leftovers(self.models_dir)
            except TrainingInProgressError:
                log.info("a training is running in another process: its staging folder is left alone")
            for vdir in self.models_dir.iterdir():
                if is_version(vdir.name) and vdir.is_dir():
                    removed += atomic.remove_leftovers(vdir)
        if self.root.is_dir():
            removed += atomic.remove_leftovers(self.root)
        served = self.served_version()
        if served is not None:
            try:
                meta = self.verify(served)  # never copy a damaged or tampered file over the mirror
                mirror = self.root / MODEL_FILE
                metrics_mirror = self.root / METRICS_FILE
                served_metrics = self.version_dir(served) / METRICS_FILE
                if (
                    not mirror.is_file()
                    or sha256_file(mirror) != meta["files"][MODEL_FILE]
                    or not metrics_mirror.is_file()
                    or metrics_mirror.read_bytes() != served_metrics.read_bytes()
                ):
                    with self.write_lock():
                        self._mirror(served)
                    log.warning("re-synced results/%s with served version %s", MODEL_FILE, served)
            except (ModelNotFoundError, ArtifactIntegrityError, FileNotFoundError) as exc:
                log.error("served pointer names an unusable version %s: %s", served, exc)
        if removed:
            log.warning("removed %d leftover temporary file(s) from an interrupted run", len(removed))
        return [str(path) for path in removed]
