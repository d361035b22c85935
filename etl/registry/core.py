"""``Registry``: the one way into the model registry (the package's docstring has the whole picture).

Its methods do the database's part themselves (names and listing, metadata and evaluations, the leases, the
served pointer, the reference pin) and hand the rest to publishing.py (files first, checked, then the row),
reading.py (files read back and checked), promotion.py (the pointer's compare-and-swap) and recovery.py
(clean-up after a crash, the RESULTS_DIR mirror).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from etl.artifacts import ArtifactStore
from etl.db import sqlite_url
from etl.errors import (
    ArtifactIntegrityError,
    ModelNotFoundError,
    NoServedModelError,
    TrainingInProgressError,
    UploadInProgressError,
)
from etl.registry import promotion, publishing, reading, recovery
from etl.registry.layout import HOLDOUT_FILE, MUTABLE_META, is_version, status_of
from etl.registry_db.lease import Lease, describe
from etl.registry_db.store import LeaseBusy, Pointer, RegistryDB
from etl.scorer import LinearModel

if TYPE_CHECKING:
    from etl.settings import Settings

UPLOAD_WAIT_SECONDS = 600.0  # how long an upload waits for another host's upload of the same registry


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
        return publishing.create_version(self, version, files, meta, lease=lease)

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
        return publishing.publish_report(self, version, files, evaluation_id)

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
        return reading.read_report_file(self, version, name)

    def report_location(self, version: str) -> str | None:
        record = self.report(version)
        return None if record is None else self.store.url_of(f"{record['prefix']}/report.html")

    # -- reading a version -----------------------------------------------------------------------
    def read_file(self, version: str, name: str, meta: dict[str, Any] | None = None) -> bytes:
        """A file of the version, checked against the sha256 recorded when it was published.

        Raises:
            ArtifactIntegrityError: the version has no such file, or it changed.
        """
        return reading.read_file(self, version, name, meta)

    def has_file(self, version: str, name: str) -> bool:
        """Whether the version was published with a file ``name`` (not whether the store still holds it)."""
        return name in self.read_meta(version)["files"]

    def load_model(self, version: str) -> LinearModel:
        """The version's model from ``model.json``, read once and used only if its signature verifies.

        Raises:
            ArtifactIntegrityError: missing, not signed with this MODEL_SIGNING_KEY, or not a valid model.
        """
        return reading.load_model(self, version)

    def verify(self, version: str) -> dict[str, Any]:
        """Check model.json's signature and model.joblib's sha256 (read back from the store); return meta.

        Raises:
            ArtifactIntegrityError: a file is missing or its bytes changed since training.
        """
        return reading.verify(self, version)

    def load_holdout(self, version: str) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(self.read_file(version, HOLDOUT_FILE)))

    def load_nested(self, version: str) -> pd.DataFrame | None:
        """The nested-CV predictions (``NestedCV.pooled()`` as trained), or None for older versions."""
        return reading.load_nested(self, version)

    def load_nested_models(self, version: str) -> list[LinearModel]:
        return reading.load_nested_models(self, version)

    def fetch_file(self, version: str, name: str, dest: Path) -> Path:
        """Copy a file of the version to ``dest`` (replaced atomically, and only by the checked bytes)."""
        return reading.fetch_file(self, version, name, dest)

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
        return promotion.promote(self, version, expected_epoch=expected_epoch, lease=lease)

    def promotions(self) -> list[dict[str, Any]]:
        """Every promotion, oldest first: ``epoch``, ``version``, ``previous``, ``promoted_at``."""
        return self._db.promotions()

    def sync_mirror(self) -> bool:
        """Make RESULTS_DIR/model.joblib and metrics.json the served version's (checked bytes only); returns
        whether a file changed. Serialised on this host; the pointer is read inside the lock, so concurrent
        calls converge on the newest promotion."""
        return recovery.sync_mirror(self)

    def recover(self) -> list[str]:
        """Clean up after a crash: delete what unfinished publications left in the artifact store (while
        holding the training lease, so never a running training's), drop temporary files, re-sync the
        served mirrors. Returns what was removed (store keys or prefixes, and local paths)."""
        return recovery.recover(self)

    # -- the reference set -----------------------------------------------------------------------
    def reference_pin(self) -> dict[str, Any] | None:
        """The pinned reference set: ``sha256``, ``rows``, ``source``, ``pinned_at``, ``key``; or None."""
        return self._db.reference_pin()

    def pin_reference(self, data: bytes, rows: int, source: str) -> dict[str, Any]:
        """Store a reference set's CSV (create-only, under its sha256) and pin it."""
        return publishing.pin_reference(self, data, rows, source)

    def read_reference(self, pin: dict[str, Any]) -> bytes:
        """The CSV of a pinned reference set, checked against its pinned sha256."""
        return reading.read_checked(self.store, str(pin["key"]), pin["sha256"], "the reference set")
