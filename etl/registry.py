"""The model registry: versions, their files and their evaluations, the served pointer, the training lease.

Two stores, one URL each (docs/replicas.md):

- the **database** (``REGISTRY_URL``; default ``sqlite:///RESULTS_DIR/registry.db``; PostgreSQL for several
  hosts) holds each version's metadata, the sha256 of each of its files and the HMAC signature of its
  model.json, its evaluations (metrics, the gate's verdict, where its report is), the served pointer with its
  epoch, the leases, the pinned reference set, and the only mutable per-version state (Drive progress,
  upload records). etl/registry_db/ has the tables and transactions.
- the **artifact store** (``ARTIFACT_URL``; default the folder ``RESULTS_DIR/models``; ``s3://`` for several
  hosts) holds the files, written once and never changed (etl/artifacts.py)::

    <version>/model.json            the served model as plain data (weights, calibration, threshold)
    <version>/model.joblib          the same model as a scikit-learn object, for people to download
    <version>/holdout.csv           the version's held-out rows
    <version>/nested.csv            the nested-CV predictions (one row per outer fold and row)
    <version>/nested_models.json    the nested-CV fold models (their disagreement is the gate's noise)
    <version>/reports/<id>/...      one evaluation report (report.html, report/<figure>.png) per writing
    reference/<sha256>.csv          a pinned reference set (etl/reference.py)

A version is published last: its files are written create-only under its name, read back and checked against
their sha256, and only then is its row inserted, in the transaction that checks the trainer's lease still
holds (fencing). A crash before that leaves files no row names; the next holder of the training lease
(``recover``) deletes them. Evaluations are rows, never files: a re-evaluation adds a row, and its report goes
under a new ``reports/<id>/`` key. The pointer moves by compare-and-swap on its epoch (``promote``).

``RESULTS_DIR/model.joblib`` and ``RESULTS_DIR/metrics.json`` mirror the served version on each host that
promotes, serves or recovers. Nothing here unpickles: the service loads ``model.json``, checked against its
signature (etl/signing.py) before it is parsed; every other file is checked against its sha256 when read.
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
from typing import TYPE_CHECKING, Any

import pandas as pd

from etl import atomic
from etl.artifacts import ArtifactStore
from etl.db import sqlite_url
from etl.errors import (
    ArtifactExistsError,
    ArtifactIntegrityError,
    ArtifactNotFoundError,
    DatabaseUnavailableError,
    LeaseLostError,
    ModelNotFoundError,
    NoServedModelError,
    TrainingInProgressError,
    UploadInProgressError,
)
from etl.hashing import sha256_bytes, sha256_file
from etl.locks import file_lock
from etl.registry_db.lease import Lease, describe
from etl.registry_db.store import LeaseBusy, Pointer, RegistryDB, check_servable, gate_passed
from etl.scorer import LinearModel
from etl.signing import sign, verify

if TYPE_CHECKING:
    from etl.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "Lease",
    "Pointer",
    "Registry",
    "gate_passed",
    "is_version",
    "new_version_name",
    "status_of",
]

VERSION_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")  # use fullmatch: `$` would take a trailing newline
MODEL_JSON, MODEL_FILE, META_FILE, METRICS_FILE = "model.json", "model.joblib", "meta.json", "metrics.json"
HOLDOUT_FILE, NESTED_FILE, NESTED_MODELS_FILE = "holdout.csv", "nested.csv", "nested_models.json"
REQUIRED_FILES = (MODEL_JSON, MODEL_FILE, HOLDOUT_FILE)
REPORTS = "reports"  # <version>/reports/<id>/: one evaluation report per writing
REFERENCE_PREFIX = "reference"
# the parts of a version's metadata that change after it is published (etl/upload_results.py)
MUTABLE_META = ("drive", "uploads")
# what read_meta adds to the training metadata, from the version's own columns
_RECORDED = ("version", "created_at", "created_ns", "files", "model_signature")
# an unreferenced report this old is garbage from an interrupted writing (none takes an hour)
REPORT_GARBAGE_SECONDS = 3600.0
UPLOAD_WAIT_SECONDS = 600.0  # how long an upload waits for another host's upload of the same registry


def new_version_name(salt: str, now: datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex>``: sortable by time, unique through the hash of salt and clock."""
    now = now or datetime.now(UTC)
    digest = sha256_bytes(f"{salt}:{time.time_ns()}:{os.getpid()}".encode())[:8]
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{digest}"


def is_version(name: object) -> bool:
    return isinstance(name, str) and VERSION_RE.fullmatch(name) is not None


def status_of(metrics: dict[str, Any] | None) -> str:
    """A version's status from its current evaluation: ``trained`` (none yet), ``passed`` or ``rejected``."""
    if metrics is None:
        return "trained"
    return "passed" if gate_passed(metrics) else "rejected"


def _name_time(name: str) -> float | None:
    """Unix time encoded in a ``new_version_name``, or None."""
    try:
        return datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class Registry:
    """The model registry of ``results_dir``.

    Args:
        results_dir: where the served mirrors (model.joblib, metrics.json) go, and the defaults of the two
            stores (``registry.db`` and ``models/`` in it).
        signing_key: signs and checks ``model.json`` (reading the pointer, listing and promoting need none;
            registering and loading a model do).
        registry_url: the database (REGISTRY_URL); empty = ``sqlite:///<results_dir>/registry.db``.
        artifact_url, artifact_endpoint_url: the artifact store (ARTIFACT_URL); empty =
            ``<results_dir>/models``.
        lease_seconds: how long a training lease outlives a trainer that stops renewing it.

    The default (both URLs empty) imports an on-disk registry of the earlier layout found in ``results_dir``
    the first time the database is used (etl/registry_import.py); ``python -m etl registry import`` does it
    for any other pair of URLs.
    """

    def __init__(
        self,
        results_dir: Path,
        signing_key: bytes | None = None,
        *,
        registry_url: str = "",
        artifact_url: str = "",
        artifact_endpoint_url: str = "",
        lease_seconds: float = 60.0,
    ) -> None:
        self.root = Path(results_dir)
        self.db = RegistryDB(registry_url or sqlite_url(self.root / "registry.db"))
        self.store = ArtifactStore(
            artifact_url or str(self.root / "models"), endpoint_url=artifact_endpoint_url
        )
        self.default_layout = not registry_url and not artifact_url
        self.lease_seconds = lease_seconds
        self._key = signing_key
        # the default configuration imports an on-disk registry of the earlier layout found in results_dir
        self.import_legacy = self.default_layout
        self._legacy_checked = False

    @classmethod
    def from_settings(cls, settings: Settings, signing_key: bytes | None = None) -> Registry:
        return cls(
            settings.results_dir,
            signing_key,
            registry_url=settings.registry_url,
            artifact_url=settings.artifact_url,
            artifact_endpoint_url=settings.artifact_endpoint_url,
            lease_seconds=settings.training_lease_seconds,
        )

    def close(self) -> None:
        """Close the database's connections (a registry can be used again afterwards)."""
        self.db.dispose()

    def _signing_key(self) -> bytes:
        if self._key is None:
            raise ArtifactIntegrityError("this registry was opened without a model-signing key")
        return self._key

    @property
    def _db(self) -> RegistryDB:
        """The database, after importing (once) an on-disk registry of the earlier layout in the default
        configuration, so that upgrading a single machine needs no command."""
        if self.import_legacy and not self._legacy_checked:
            self._legacy_checked = True
            from etl.registry_import import import_if_legacy

            import_if_legacy(self)
        return self.db

    # -- names -----------------------------------------------------------------------------------
    def _row(self, version: str) -> dict[str, Any]:
        """The version's row.

        Raises:
            ModelNotFoundError: the name is malformed or no such version exists.
        """
        if not is_version(version):
            raise ModelNotFoundError(
                f"{version!r} is not a model version (expected YYYYMMDDTHHMMSSZ-xxxxxxxx; list them with "
                "`python -m etl models`)"
            )
        row = self._db.version(version)
        if row is None:
            raise ModelNotFoundError(f"model version {version} does not exist")
        return row

    def check_version(self, version: str) -> str:
        """``version`` if it exists; else ModelNotFoundError."""
        self._row(version)
        return version

    def versions(self) -> list[str]:
        """Every published version, oldest first (names from the same second ordered by creation time)."""
        return [v for v, _ in sorted(self._db.version_order(), key=lambda r: (r[0][:16], r[1], r[0]))]

    def listing(self) -> list[dict[str, Any]]:
        """Every published version, oldest first, in one query: ``version``, ``created_at``, ``metrics`` (the
        current evaluation's, or None) and ``report`` (its record, or None)."""
        rows = sorted(
            self._db.all_versions(), key=lambda r: (r["version"][:16], r["created_ns"], r["version"])
        )
        return [
            {
                "version": r["version"],
                "created_at": r["created_at"],
                "metrics": r["metrics"],
                "report": r["report"],
            }
            for r in rows
        ]

    def latest_version(self) -> str:
        versions = self.versions()
        if not versions:
            raise ModelNotFoundError("no model has been trained yet: train one first")
        return versions[-1]

    def find_fingerprint(self, fingerprint: str) -> str | None:
        """The newest version trained from the same data, settings and libraries, if any."""
        return self._db.find_fingerprint(fingerprint)

    # -- leases ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def training_lock(self) -> Iterator[Lease]:
        """The training lease, held (and renewed) for a whole training: a second trainer, on any host,
        gets TrainingInProgressError at once. Pass the lease to ``create_version`` and ``promote``."""
        try:
            lease = Lease.acquire(self._db, "training", self.lease_seconds)
        except LeaseBusy as busy:
            raise TrainingInProgressError(
                f"a training is already running ({describe(busy.holder)}); wait for it to finish and try "
                "again"
            ) from None
        with lease:
            yield lease

    @contextlib.contextmanager
    def upload_lock(self, wait: float = UPLOAD_WAIT_SECONDS) -> Iterator[Lease]:
        """The upload lease: one upload at a time across hosts (two would race to create the Drive folder)."""
        try:
            lease = Lease.acquire(self._db, "upload", self.lease_seconds, wait=wait)
        except LeaseBusy as busy:
            raise UploadInProgressError(
                f"another upload ({describe(busy.holder)}) has been running for more than {wait:.0f} s; try "
                "again later"
            ) from None
        with lease:
            yield lease

    # -- writing a version -----------------------------------------------------------------------
    def create_version(
        self, version: str, files: dict[str, bytes], meta: dict[str, Any], *, lease: Lease | None = None
    ) -> dict[str, Any]:
        """Publish a version: upload its files create-only, check them back, then insert its row (under the
        training ``lease``: refused if another trainer took it over). Returns its metadata.

        ``files`` must hold model.json, model.joblib and holdout.csv (nested.csv and nested_models.json are
        optional). The row gets ``version``, ``created_at``, the sha256 of every file and the signature of
        model.json. Without ``lease``, the training lease is taken for the publication.

        Raises:
            LeaseLostError: another trainer holds the lease now; nothing is published.
            TrainingInProgressError: no ``lease`` given and another trainer holds it.
            ArtifactStoreError, ArtifactIntegrityError: the files could not be stored whole; nothing is
                published.
        """
        if not is_version(version):
            raise ValueError(f"bad version name {version!r}")
        missing = [name for name in REQUIRED_FILES if name not in files]
        if missing:
            raise ValueError(f"a version needs {missing}")
        if lease is None:
            with self.training_lock() as held:
                return self.create_version(version, files, meta, lease=held)
        if lease.lost.is_set():  # known already: spare the upload (the insert's own check is the guarantee)
            raise LeaseLostError(
                f"this process's {lease.name} lease expired and another process took it over: version "
                f"{version} is not published"
            )
        digests = {name: sha256_bytes(data) for name, data in files.items()}
        signature = sign(self._signing_key(), files[MODEL_JSON])
        created_at = meta.get("created_at") or datetime.now(UTC).isoformat(timespec="seconds")
        created_ns = time.time_ns()
        training_meta = {k: v for k, v in meta.items() if k not in (*_RECORDED, *MUTABLE_META)}
        try:
            for name, data in files.items():
                self.store.put_new(f"{version}/{name}", data)
            for name, digest in digests.items():  # read back: what the store holds is what was trained
                stored = self.store.sha256(f"{version}/{name}")
                if stored != digest:
                    raise ArtifactIntegrityError(
                        f"{name} of version {version} reads back from {self.store.location} with sha256 "
                        f"{stored[:12]}..., not the {digest[:12]}... written; nothing is published"
                    )
            self._db.insert_version(
                {
                    "version": version,
                    "created_ns": created_ns,
                    "created_at": created_at,
                    "meta": training_meta,
                    "files": digests,
                    "model_signature": signature,
                    "fingerprint": meta.get("fingerprint"),
                    "status": "trained",
                    "state": {},
                    "lease_generation": lease.generation,
                },
                lease.fence,
            )
        except DatabaseUnavailableError:
            raise  # the insert may have committed: its files stay; recover() decides by the row
        except BaseException:
            with contextlib.suppress(Exception):  # garbage that recover() would remove anyway
                self.store.delete_prefix(version)
            raise
        log.info(
            "registered version %s (lease generation %d; model.json signed, sha256 %s)",
            version,
            lease.generation,
            digests[MODEL_JSON][:12],
        )
        return self.read_meta(version)

    def read_meta(self, version: str) -> dict[str, Any]:
        """The version's metadata as one document: what training recorded, ``version``, ``created_at``,
        ``created_ns``, ``files`` (name -> sha256), ``model_signature``, and the mutable ``drive`` and
        ``uploads`` when set."""
        row = self._row(version)
        return {
            **row["meta"],
            "version": row["version"],
            "created_at": row["created_at"],
            "created_ns": row["created_ns"],
            "files": dict(row["files"]),
            "model_signature": row["model_signature"],
            **(row["state"] or {}),
        }

    def update_meta(self, version: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the version's mutable state (``drive``, ``uploads``) and return its metadata.

        Raises:
            ValueError: a field of what training recorded: those never change after publication.
        """
        frozen = sorted(set(fields) - set(MUTABLE_META))
        if frozen:
            raise ValueError(f"{frozen} are recorded at training and never change; mutable: {MUTABLE_META}")
        self._row(version)
        self._db.update_state(version, fields)
        return self.read_meta(version)

    def evaluation(self, version: str) -> dict[str, Any] | None:
        """The version's current evaluation: ``id``, ``evaluated_at``, ``passed``, ``metrics``, ``report``."""
        self._row(version)
        return self._db.evaluation(version)

    def read_metrics(self, version: str) -> dict[str, Any] | None:
        evaluation = self.evaluation(version)
        return None if evaluation is None else dict(evaluation["metrics"])

    def write_metrics(self, version: str, metrics: dict[str, Any]) -> int:
        """Record an evaluation of ``version`` (it becomes the current one); returns its id. The served
        version's re-evaluation refreshes RESULTS_DIR/metrics.json."""
        evaluation_id = self._db.add_evaluation(self.check_version(version), metrics)
        if version == self.served_version():
            self.sync_mirror()
        return evaluation_id

    # -- reports ---------------------------------------------------------------------------------
    def publish_report(
        self, version: str, files: dict[str, bytes], evaluation_id: int | None = None
    ) -> dict[str, Any]:
        """Store an evaluation report's files create-only under a new ``<version>/reports/<id>/`` and point
        the evaluation (default the current one) at them. Returns the record (``prefix``, ``files``)."""
        if evaluation_id is None:
            current = self.evaluation(version)
            if current is None:
                raise ValueError(f"version {version} has no evaluation to attach a report to")
            evaluation_id = int(current["id"])
        prefix = f"{version}/{REPORTS}/{new_version_name(version)}"
        try:
            digests = {name: self.store.put_new(f"{prefix}/{name}", data) for name, data in files.items()}
            for name, digest in digests.items():
                if self.store.sha256(f"{prefix}/{name}") != digest:
                    raise ArtifactIntegrityError(
                        f"{name} of the report of version {version} reads back changed"
                    )
            record = {"prefix": prefix, "files": digests}
            self._db.set_report(evaluation_id, record)
        except DatabaseUnavailableError:
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                self.store.delete_prefix(prefix)
            raise
        return record

    def report(self, version: str) -> dict[str, Any] | None:
        """The current evaluation's report record (``prefix``, ``files``), or None."""
        evaluation = self.evaluation(version)
        report = evaluation.get("report") if evaluation else None
        return dict(report) if isinstance(report, dict) else None

    def read_report_file(self, version: str, name: str) -> bytes | None:
        """A file of the current report, checked against its sha256; None when the report has no such file.

        Raises:
            ArtifactIntegrityError: the stored file is missing or changed since it was written.
        """
        record = self.report(version)
        expected = (record or {}).get("files", {}).get(name)
        if record is None or expected is None:
            return None
        return self._checked(f"{record['prefix']}/{name}", expected, f"{name} of version {version}")

    def report_location(self, version: str) -> str | None:
        record = self.report(version)
        return None if record is None else self.store.url_of(f"{record['prefix']}/report.html")

    # -- reading a version -----------------------------------------------------------------------
    def _checked(self, key: str, expected: object, what: str, missing: str = "") -> bytes:
        try:
            data = self.store.get(key)
        except ArtifactNotFoundError:
            raise ArtifactIntegrityError(missing or f"{what} is missing from {self.store.location}") from None
        actual = sha256_bytes(data)
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{what} fails its integrity check: sha256 {actual[:12]}... does not match "
                f"{str(expected)[:12]}... recorded when it was written; it was changed or damaged, so it "
                "will not be used"
            )
        return data

    def read_file(self, version: str, name: str, meta: dict[str, Any] | None = None) -> bytes:
        """A file of the version, checked against the sha256 recorded when it was published.

        Raises:
            ArtifactIntegrityError: the version has no such file, or it changed.
        """
        meta = meta or self.read_meta(version)
        expected = (meta.get("files") or {}).get(name)
        if expected is None:
            raise ArtifactIntegrityError(f"version {version} has no {name}")
        return self._checked(
            f"{version}/{name}",
            expected,
            f"{name} of version {version}",
            f"version {version} has no {name} (it is missing from {self.store.location})",
        )

    def has_file(self, version: str, name: str) -> bool:
        """Whether the version was published with a file ``name`` (not whether the store still holds it)."""
        return name in self.read_meta(version)["files"]

    def load_model(self, version: str) -> LinearModel:
        """The version's model from ``model.json``, read once and used only if its signature verifies.

        Raises:
            ArtifactIntegrityError: missing, not signed with this MODEL_SIGNING_KEY, or not a valid model.
        """
        meta = self.read_meta(version)
        try:
            data = self.store.get(f"{version}/{MODEL_JSON}")
        except ArtifactNotFoundError:
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
        """Check model.json's signature and model.joblib's sha256 (read back from the store); return meta.

        Raises:
            ArtifactIntegrityError: a file is missing or its bytes changed since training.
        """
        self.load_model(version)
        meta = self.read_meta(version)
        expected = meta["files"].get(MODEL_FILE)
        try:
            actual = self.store.sha256(f"{version}/{MODEL_FILE}")
        except ArtifactNotFoundError:
            raise ArtifactIntegrityError(f"version {version} has no {MODEL_FILE}") from None
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{MODEL_FILE} of version {version} fails its integrity check: sha256 {actual[:12]}... does "
                f"not match {str(expected)[:12]}... recorded at training; it was changed or damaged, so it "
                "will not be used"
            )
        return meta

    def load_holdout(self, version: str) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(self.read_file(version, HOLDOUT_FILE)))

    def load_nested(self, version: str) -> pd.DataFrame | None:
        """The nested-CV predictions (``NestedCV.pooled()`` as trained), or None for older versions."""
        meta = self.read_meta(version)
        if NESTED_FILE not in meta["files"]:
            return None
        return pd.read_csv(io.BytesIO(self.read_file(version, NESTED_FILE, meta)))

    def load_nested_models(self, version: str) -> list[LinearModel]:
        meta = self.read_meta(version)
        if NESTED_MODELS_FILE not in meta["files"]:
            return []
        data = self.read_file(version, NESTED_MODELS_FILE, meta)
        try:
            documents = json.loads(data)
        except ValueError:
            raise ArtifactIntegrityError(f"{NESTED_MODELS_FILE} of version {version} is not JSON") from None
        if not isinstance(documents, list):
            raise ArtifactIntegrityError(f"{NESTED_MODELS_FILE} of version {version} is not a list")
        return [LinearModel.from_dict(d) for d in documents]

    def fetch_file(self, version: str, name: str, dest: Path) -> Path:
        """Copy a file of the version to ``dest`` (replaced atomically, and only by the checked bytes)."""
        expected = self.read_meta(version)["files"].get(name)
        if expected is None:
            raise ArtifactIntegrityError(f"version {version} has no {name}; it cannot be copied")
        try:
            self.store.get_file(f"{version}/{name}", dest, sha256=expected)
        except ArtifactNotFoundError:
            raise ArtifactIntegrityError(f"version {version} has no {name}; it cannot be copied") from None
        return dest

    # -- serving ---------------------------------------------------------------------------------
    def pointer(self) -> Pointer:
        """The served version and the pointer's epoch (one query: what every replica polls)."""
        return self._db.pointer()

    def served_version(self) -> str | None:
        return self.pointer().version

    def last_promotion_time(self) -> float | None:
        """Unix time the served pointer last switched, or None."""
        return self.pointer().promoted_at

    def last_training_time(self) -> float | None:
        """Unix time the newest version was registered, or None."""
        order = self._db.version_order()
        return max(ns for _, ns in order) / 1e9 if order else None

    def require_served(self) -> str:
        version = self.served_version()
        if version is None:
            raise NoServedModelError()
        return version

    def status(self, version: str) -> str:
        return status_of(self.read_metrics(version))

    def promote(
        self, version: str, *, expected_epoch: int | None = None, lease: Lease | None = None
    ) -> str | None:
        """Make ``version`` the served one, if the pointer is still at ``expected_epoch`` (default: the epoch
        read when this call starts); return the previously served version.

        With ``lease`` (a trainer promoting what it trained), the switch also requires that the lease is still
        this trainer's, checked in the same transaction.

        Raises:
            NotEvaluatedError / NotServableError: not evaluated, or it failed the gate.
            ArtifactIntegrityError: its files fail their integrity checks.
            PromotionConflictError: the pointer moved first (another promotion won).
            LeaseLostError: ``lease`` was taken over by another trainer.
        """
        self._row(version)
        if expected_epoch is None:
            expected_epoch = self.pointer().epoch
        check_servable(version, self.read_metrics(version))
        if lease is not None and lease.lost.is_set():
            raise LeaseLostError(
                f"this process's training lease was taken over by another trainer: version {version} is not "
                "promoted by it"
            )
        self.verify(version)
        before = self._db.promote(version, expected_epoch, None if lease is None else lease.fence)
        log.info(
            "promoted version %s at epoch %d (previously %s)", version, expected_epoch + 1, before.version
        )
        try:
            self.sync_mirror()
        except Exception as exc:  # the promotion stands; recover() re-syncs the copies
            log.error("promoted %s, but could not refresh the copies in %s: %s", version, self.root, exc)
        return before.version

    def promotions(self) -> list[dict[str, Any]]:
        """Every promotion, oldest first: ``epoch``, ``version``, ``previous``, ``promoted_at``."""
        return self._db.promotions()

    def sync_mirror(self) -> bool:
        """Make RESULTS_DIR/model.joblib and metrics.json the served version's (checked bytes only); returns
        whether a file changed. Serialised on this host; the pointer is read inside the lock, so concurrent
        calls converge on the newest promotion."""
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / ".registry.lock"):
            served = self.served_version()
            if served is None:
                return False
            meta = self.verify(served)  # never copy a damaged or tampered file over the mirror
            changed = False
            mirror = self.root / MODEL_FILE
            if not mirror.is_file() or sha256_file(mirror) != meta["files"][MODEL_FILE]:
                self.fetch_file(served, MODEL_FILE, mirror)
                changed = True
            metrics = self.read_metrics(served)
            wanted = atomic.json_bytes(metrics) if metrics is not None else None
            metrics_mirror = self.root / METRICS_FILE
            current = metrics_mirror.read_bytes() if metrics_mirror.is_file() else None
            if wanted is not None and current != wanted:
                atomic.write_bytes(metrics_mirror, wanted)
                changed = True
        return changed

    def recover(self) -> list[str]:
        """Clean up after a crash: delete what unfinished publications left in the artifact store (while
        holding the training lease, so never a running training's), drop temporary files, re-sync the
        served mirrors. Returns what was removed (store keys or prefixes, and local paths)."""
        removed: list[str] = []
        if self.root.is_dir():
            removed += [str(p) for p in atomic.remove_leftovers(self.root)]
        if self.default_layout and (self.root / "models").is_dir():
            # staging folders of the on-disk registry before the artifact store
            removed += [str(p) for p in atomic.remove_leftovers(self.root / "models")]
        try:
            with self.training_lock():
                removed += self._collect_garbage()
        except TrainingInProgressError:
            log.info("a training is running elsewhere: what it is uploading is left alone")
        try:
            if self.sync_mirror():
                log.warning("re-synced %s and %s with the served version", MODEL_FILE, METRICS_FILE)
        except (ModelNotFoundError, ArtifactIntegrityError) as exc:
            log.error("the served pointer names an unusable version: %s", exc)
        if removed:
            log.warning("removed %d leftover(s) of an interrupted run: %s", len(removed), ", ".join(removed))
        return removed

    def _collect_garbage(self) -> list[str]:
        """Prefixes in the store that no row refers to: unfinished publications of versions, and reports
        older than REPORT_GARBAGE_SECONDS. Call with the training lease held."""
        removed = []
        published = set(self.versions())
        for folder in self.store.folders():
            if not is_version(folder) or folder in published:
                continue
            if self.store.exists(f"{folder}/{META_FILE}"):  # a version of the on-disk layout, not imported
                log.warning(
                    "%s holds version %s of the earlier on-disk layout, which the registry does not list: "
                    "import it with `python -m etl registry import`",
                    self.store.location,
                    folder,
                )
                continue
            self.store.delete_prefix(folder)
            removed.append(folder)
        in_use = self._db.reports_in_use()
        for version in published:
            for report_id in self.store.folders(f"{version}/{REPORTS}"):
                prefix = f"{version}/{REPORTS}/{report_id}"
                written = _name_time(report_id)
                old = written is not None and time.time() - written > REPORT_GARBAGE_SECONDS
                if prefix not in in_use and old:
                    self.store.delete_prefix(prefix)
                    removed.append(prefix)
        return removed

    # -- the reference set -----------------------------------------------------------------------
    def reference_pin(self) -> dict[str, Any] | None:
        """The pinned reference set: ``sha256``, ``rows``, ``source``, ``pinned_at``, ``key``; or None."""
        return self._db.reference_pin()

    def pin_reference(self, data: bytes, rows: int, source: str) -> dict[str, Any]:
        """Store a reference set's CSV (create-only, under its sha256) and pin it."""
        digest = sha256_bytes(data)
        key = f"{REFERENCE_PREFIX}/{digest}.csv"
        if not self.store.exists(key):
            with contextlib.suppress(ArtifactExistsError):  # written by a concurrent pin of the same set
                self.store.put_new(key, data)
        self._checked(key, digest, "the reference set")
        pin = {
            "sha256": digest,
            "rows": rows,
            "source": source[:300],
            "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "key": key,
        }
        self._db.add_reference(pin)
        return pin

    def read_reference(self, pin: dict[str, Any]) -> bytes:
        """The CSV of a pinned reference set, checked against its pinned sha256."""
        return self._checked(str(pin["key"]), pin["sha256"], "the reference set")
