"""Model versions on disk, atomic writes, integrity checks and the pointer to the served version.

Layout under RESULTS_DIR::

    models/<version>/model.joblib   the fitted scikit-learn pipeline
    models/<version>/meta.json      parameters, threshold, sha256 of model.joblib and of the data, lineage
    models/<version>/holdout.csv    the version's held-out rows (evaluation and gate comparisons)
    models/<version>/metrics.json   after evaluation: metrics and the quality-gate verdict
    current.json                    {"version": ...}: the served version (switched by an atomic rename)
    model.joblib, metrics.json      copies of the served version's files (the seed's paths)

A version folder is built under ``models/.tmp-<version>`` and renamed into place only when complete, so a
crash never leaves a half-written version that looks real.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
from sklearn.pipeline import Pipeline

from etl.errors import (
    ArtifactIntegrityError,
    ModelNotFoundError,
    NoServedModelError,
    NotEvaluatedError,
    NotServableError,
    TrainingInProgressError,
)
from etl.io import TMP_PREFIX, copy_atomic, fsync_dir, read_json, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")  # use fullmatch: `$` would take a trailing newline
MODEL_FILE, META_FILE, METRICS_FILE, HOLDOUT_FILE = "model.joblib", "meta.json", "metrics.json", "holdout.csv"


def new_version_name(salt: str, now: datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex>``: sortable by time, unique through the hash of salt and clock."""
    now = now or datetime.now(UTC)
    digest = hashlib.sha256(f"{salt}:{time.time_ns()}:{os.getpid()}".encode()).hexdigest()[:8]
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{digest}"


class Registry:
    """The model registry rooted at ``results_dir``."""

    def __init__(self, results_dir: Path) -> None:
        self.root = Path(results_dir)
        self.models_dir = self.root / "models"
        self.pointer = self.root / "current.json"

    # -- names and paths -------------------------------------------------------------------------
    def version_dir(self, version: str) -> Path:
        """The folder of an existing version.

        Raises:
            ModelNotFoundError: the name is malformed or no such version exists.
        """
        if not VERSION_RE.fullmatch(version or ""):
            raise ModelNotFoundError(
                f"{version!r} is not a model version (expected YYYYMMDDTHHMMSSZ-xxxxxxxx; see GET /models)"
            )
        path = self.models_dir / version
        if not (path / META_FILE).is_file():
            raise ModelNotFoundError(f"model version {version} does not exist (see GET /models)")
        return path

    def versions(self) -> list[str]:
        """Every complete version, oldest first (names from the same second ordered by creation time)."""
        if not self.models_dir.is_dir():
            return []
        names = [
            p.name
            for p in self.models_dir.iterdir()
            if VERSION_RE.fullmatch(p.name) and (p / META_FILE).is_file()
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
            raise ModelNotFoundError(
                "no model has been trained yet: run POST /train or `python -m etl train`"
            )
        return versions[-1]

    # -- locks -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _flock(self, name: str, *, blocking: bool) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                raise TrainingInProgressError(
                    "a training is already running; wait for it to finish and try again"
                ) from None
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def training_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held for a whole training; a second trainer (thread or process) gets TrainingInProgressError."""
        return self._flock(".train.lock", blocking=False)

    def write_lock(self) -> contextlib.AbstractContextManager[None]:
        """Serialises promotions and meta.json rewrites across threads and processes."""
        return self._flock(".registry.lock", blocking=True)

    # -- writing a version -----------------------------------------------------------------------
    def create_version(
        self, version: str, pipeline: Pipeline, meta: dict[str, Any], holdout: pd.DataFrame
    ) -> Path:
        """Write a complete version folder atomically and return its path.

        ``meta`` gets ``version``, ``created_at`` and ``model_sha256`` added.
        """
        if not VERSION_RE.fullmatch(version):
            raise ValueError(f"bad version name {version!r}")
        self.models_dir.mkdir(parents=True, exist_ok=True)
        staging = self.models_dir / f"{TMP_PREFIX}{version}"
        final = self.models_dir / version
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            joblib.dump(pipeline, staging / MODEL_FILE)
            holdout.to_csv(staging / HOLDOUT_FILE, index=False)
            for name in (MODEL_FILE, HOLDOUT_FILE):
                with (staging / name).open("rb+") as fh:
                    os.fsync(fh.fileno())
            meta = {
                **meta,
                "version": version,
                "created_at": meta.get("created_at") or datetime.now(UTC).isoformat(timespec="seconds"),
                "created_ns": time.time_ns(),
                "model_sha256": sha256_file(staging / MODEL_FILE),
                "holdout_sha256": sha256_file(staging / HOLDOUT_FILE),
            }
            write_json_atomic(staging / META_FILE, meta)
            fsync_dir(staging)
            os.rename(staging, final)
            fsync_dir(self.models_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("registered version %s (model sha256 %s)", version, meta["model_sha256"][:12])
        return final

    def read_meta(self, version: str) -> dict[str, Any]:
        meta: dict[str, Any] = read_json(self.version_dir(version) / META_FILE)
        return meta

    def update_meta(self, version: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into meta.json (atomic rewrite under the write lock) and return the result."""
        with self.write_lock():
            meta = self.read_meta(version)
            meta.update(fields)
            write_json_atomic(self.version_dir(version) / META_FILE, meta)
        return meta

    def read_metrics(self, version: str) -> dict[str, Any] | None:
        path = self.version_dir(version) / METRICS_FILE
        if not path.is_file():
            return None
        metrics: dict[str, Any] = read_json(path)
        return metrics

    def write_metrics(self, version: str, metrics: dict[str, Any]) -> None:
        write_json_atomic(self.version_dir(version) / METRICS_FILE, metrics)
        if version == self.served_version():  # keep results/metrics.json mirroring the served version
            with self.write_lock():
                copy_atomic(self.version_dir(version) / METRICS_FILE, self.root / METRICS_FILE)

    # -- reading a version -----------------------------------------------------------------------
    def verify(self, version: str) -> dict[str, Any]:
        """Check model.joblib against the sha256 in meta.json; return meta.

        Raises:
            ArtifactIntegrityError: the file is missing or its bytes changed since training.
        """
        meta = self.read_meta(version)
        path = self.version_dir(version) / MODEL_FILE
        if not path.is_file():
            raise ArtifactIntegrityError(f"version {version} has no {MODEL_FILE}")
        self._check_sha256(version, sha256_file(path), meta)
        return meta

    @staticmethod
    def _check_sha256(version: str, actual: str, meta: dict[str, Any]) -> None:
        if actual != meta.get("model_sha256"):
            raise ArtifactIntegrityError(
                f"{MODEL_FILE} of version {version} fails its integrity check: sha256 {actual[:12]}... does "
                f"not match {str(meta.get('model_sha256'))[:12]}... recorded at training; it was changed or "
                "damaged, so it will not be loaded"
            )

    def load_pipeline(self, version: str) -> tuple[Pipeline, dict[str, Any]]:
        """Verify, then unpickle. A file whose sha256 does not match is never unpickled.

        The file is read once and the verified bytes are the ones unpickled, so a file replaced between
        the check and the load is never unpickled either.
        """
        meta = self.read_meta(version)
        path = self.version_dir(version) / MODEL_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactIntegrityError(f"version {version} has no {MODEL_FILE}") from None
        self._check_sha256(version, hashlib.sha256(data).hexdigest(), meta)
        pipeline = joblib.load(io.BytesIO(data))
        if not isinstance(pipeline, Pipeline):
            raise ArtifactIntegrityError(f"{MODEL_FILE} of version {version} is not a scikit-learn Pipeline")
        return pipeline, meta

    def load_holdout(self, version: str) -> pd.DataFrame:
        return pd.read_csv(self.version_dir(version) / HOLDOUT_FILE)

    # -- serving ---------------------------------------------------------------------------------
    def served_version(self) -> str | None:
        try:
            version = read_json(self.pointer).get("version")
        except (FileNotFoundError, ValueError):
            return None
        return version if isinstance(version, str) and VERSION_RE.fullmatch(version) else None

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

    def gate_passed(self, version: str) -> bool:
        metrics = self.read_metrics(version)
        return bool(metrics and metrics.get("quality_gate", {}).get("passed"))

    def status(self, version: str) -> str:
        metrics = self.read_metrics(version)
        if metrics is None:
            return "trained"
        return "passed" if metrics.get("quality_gate", {}).get("passed") else "rejected"

    def promote(self, version: str) -> str | None:
        """Make ``version`` the served one; return the previously served version.

        Raises:
            NotEvaluatedError / NotServableError: not evaluated, or it failed the gate.
            ArtifactIntegrityError: its model.joblib fails the sha256 check.
        """
        with self.write_lock():
            metrics = self.read_metrics(version)
            if metrics is None:
                raise NotEvaluatedError(
                    f"version {version} has not been evaluated: evaluate it before promoting"
                )
            if not metrics.get("quality_gate", {}).get("passed"):
                reasons = "; ".join(metrics.get("quality_gate", {}).get("reasons", [])) or "no verdict"
                raise NotServableError(
                    f"version {version} failed the quality gate and cannot be served: {reasons}"
                )
            self.verify(version)
            previous = self.served_version()
            write_json_atomic(
                self.pointer,
                {"version": version, "promoted_at": datetime.now(UTC).isoformat(timespec="seconds")},
            )
            self._mirror(version)
        log.info("promoted version %s (previously %s)", version, previous)
        return previous

    def _mirror(self, version: str) -> None:
        vdir = self.version_dir(version)
        copy_atomic(vdir / MODEL_FILE, self.root / MODEL_FILE)
        copy_atomic(vdir / METRICS_FILE, self.root / METRICS_FILE)

    def recover(self) -> list[str]:
        """Clean up after a crash: drop staging folders and temp files, re-sync the served mirrors.

        Returns the paths removed.
        """
        removed: list[str] = []
        if self.models_dir.is_dir():
            try:
                # a staging folder belongs to a training; if one is running (another process), it is not ours
                with self.training_lock():
                    for p in self.models_dir.iterdir():
                        if p.name.startswith(TMP_PREFIX):
                            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                            removed.append(str(p))
            except TrainingInProgressError:
                log.info("a training is running in another process: its staging folder is left alone")
            for vdir in self.models_dir.iterdir():
                if vdir.is_dir():
                    for tmp in vdir.glob(f"{TMP_PREFIX}*"):
                        tmp.unlink(missing_ok=True)
                        removed.append(str(tmp))
        if self.root.is_dir():
            for tmp in self.root.glob(f"{TMP_PREFIX}*"):
                tmp.unlink(missing_ok=True)
                removed.append(str(tmp))
        served = self.served_version()
        if served is not None:
            try:
                meta = self.verify(served)  # never copy a damaged or tampered file over the mirror
                mirror = self.root / MODEL_FILE
                metrics_mirror = self.root / METRICS_FILE
                served_metrics = self.version_dir(served) / METRICS_FILE
                if (
                    not mirror.is_file()
                    or sha256_file(mirror) != meta.get("model_sha256")
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
        return removed
