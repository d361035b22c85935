"""Step 5: back up a version's artifacts to ``upload/<YYYYMMDD_HHMMSS>/``, then to Google Drive if configured:
``model.joblib``, ``metrics.json`` and the evaluation report ``report.html`` (etl/report/).

The local backup is always written first (atomically: a temporary folder renamed into place), from the
registry's checked bytes, so a Drive outage loses nothing. The Drive state of a version (folder, file ids,
status) lives in the registry's database (its mutable state, ``"drive"`` in ``read_meta``); it is written as
the upload progresses, so a retried upload, on any host, reuses the folder and skips the files already there
instead of making copies. One upload runs at a time across hosts (the registry's upload lease).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etl import atomic
from etl.drive import DriveConfig, DriveResult, drive_config, upload_to_drive
from etl.errors import ArtifactIntegrityError, NotEvaluatedError, StorageError
from etl.hashing import md5_file
from etl.registry import METRICS_FILE, MODEL_FILE, Registry
from etl.report import REPORT_FILE, read_report, write_report
from etl.settings import Settings

log = logging.getLogger(__name__)

UPLOADED_FILES = (MODEL_FILE, METRICS_FILE, REPORT_FILE)
NOT_CONFIGURED = "GDRIVE_FOLDER_ID is not set"
_MAX_UPLOAD_RECORDS = 50
_BACKUP_NAME = re.compile(r"(\d{8}_\d{6})(?:_(\d+))?")  # <stamp> or <stamp>_<n> (write_backup)


@dataclass
class UploadResult:
    """What an upload did: the local backup, and the Drive upload or why it was skipped."""

    version: str
    timestamp: str
    backup_dir: str
    files: list[dict[str, Any]]
    drive: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "timestamp": self.timestamp,
            "backup_dir": self.backup_dir,
            "files": self.files,
            "drive": self.drive,
        }


def upload_to_storage(
    version: str, *, registry: Registry, settings: Settings, now: datetime | None = None
) -> UploadResult:
    """Back up ``version``'s model.joblib, metrics.json and report.html locally, then upload them to Google
    Drive. A version evaluated before reports existed gets its report written first.

    Args:
        version: a registry version.
        registry: the model registry.
        settings: UPLOAD_DIR and the Drive settings (GDRIVE_FOLDER_ID empty = local backup only).
        now: the time that names the backup and the Drive folder (UTC), for tests.

    Returns:
        UploadResult; ``drive["status"]`` is ``"uploaded"`` or ``"skipped"`` (with ``reason``).

    Raises:
        ModelNotFoundError: no such version.
        NotEvaluatedError: the version has not been evaluated yet.
        ArtifactIntegrityError: its model.joblib is missing, or a file its report is drawn from fails its
            integrity check.
        StorageError: Drive failed after retries (``DriveConfigError``: misconfigured); ``backup_dir`` says
            where the local backup is.
    """
    registry.check_version(version)
    # one upload at a time across threads, processes and hosts: two would race to create the Drive folder
    with registry.upload_lock():
        metrics = registry.read_metrics(version)
        if metrics is None:
            raise NotEvaluatedError(
                f"version {version} has not been evaluated: run evaluate first "
                f"(`python -m etl evaluate {version}`), then upload"
            )
        if not registry.has_file(version, MODEL_FILE):
            raise ArtifactIntegrityError(f"version {version} has no {MODEL_FILE}; it cannot be uploaded")
        if registry.report(version) is None:
            log.info("version %s has no %s yet: writing it before the upload", version, REPORT_FILE)
            write_report(registry, version)
        sources = {
            MODEL_FILE: registry.read_file(version, MODEL_FILE),
            METRICS_FILE: atomic.json_bytes(metrics),
            REPORT_FILE: read_report(registry, version),
        }
        stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d_%H%M%S")
        backup_dir, files = write_backup(sources, Path(settings.upload_dir), stamp)
        try:
            prune_backups(Path(settings.upload_dir), settings.backup_retention, keep_also=backup_dir)
        except OSError as exc:  # retention is housekeeping: it never fails an upload
            log.warning("could not prune old backups in %s: %s", settings.upload_dir, exc)
        log.info(
            "backed up version %s to %s (%s)",
            version,
            backup_dir,
            ", ".join(f"{f['name']} {f['size']} B" for f in files),
        )

        config = drive_config(settings)
        if config is None:
            drive: dict[str, Any] = {
                "status": "skipped",
                "reason": NOT_CONFIGURED,
                "folder_id": None,
                "folder_name": None,
                "files": [],
                "retries": 0,
            }
            log.info("Google Drive upload skipped: %s", NOT_CONFIGURED)
        else:
            result = _upload_to_drive(version, registry, config, backup_dir, stamp)
            drive = {"status": "uploaded", "reason": None} | result.to_dict()
        _record_upload(registry, version, stamp, backup_dir, drive)
        return UploadResult(version, stamp, str(backup_dir), files, drive)


def write_backup(
    sources: dict[str, bytes], upload_dir: Path, stamp: str
) -> tuple[Path, list[dict[str, Any]]]:
    """Write the version's files (``UPLOADED_FILES``, from ``sources``) into ``upload_dir/<stamp>/`` through a
    temporary folder renamed into place.

    A second backup in the same second gets ``<stamp>_2`` (``_3``, ...) unless the existing folder already
    holds the same bytes, which is then reused.
    """
    with atomic.staging_folder(upload_dir, stamp) as staging:
        files: list[dict[str, Any]] = []
        for name in UPLOADED_FILES:
            copy = staging / name
            copy.write_bytes(sources[name])
            files.append({"name": name, "size": copy.stat().st_size, "md5": md5_file(copy)})
        dest = _publish_backup(staging, upload_dir, stamp, files)
    for f in files:
        f["path"] = str(dest / f["name"])
    return dest, files


def _publish_backup(staging: Path, upload_dir: Path, stamp: str, files: list[dict[str, Any]]) -> Path:
    """Rename ``staging`` to the first free ``<stamp>``, ``<stamp>_2``...; an existing folder holding the same
    bytes is reused instead (``staging`` is then discarded)."""
    for n in range(1, 100):
        dest = upload_dir / (stamp if n == 1 else f"{stamp}_{n}")
        if dest.exists():
            if _same_backup(dest, files):
                return dest
            continue
        try:
            atomic.publish_folder(staging, dest)
        except OSError:  # made by a concurrent writer between exists() and the rename
            continue
        return dest
    raise StorageError(f"could not name a backup folder for {stamp} in {upload_dir}", step="local backup")


def prune_backups(upload_dir: Path, keep: int, *, keep_also: Path | None = None) -> list[Path]:
    """Delete all but the ``keep`` newest backup folders (by their time stamp; 0 keeps all).

    ``keep_also`` (the backup just written) is never deleted. Leftovers of an interrupted prune go too.
    """
    if keep <= 0 or not upload_dir.is_dir():
        return []
    atomic.remove_leftovers(upload_dir, f"{atomic.TMP_PREFIX}pruned-")
    backups = []
    for path in upload_dir.iterdir():
        match = _BACKUP_NAME.fullmatch(path.name)
        if match and path.is_dir():
            backups.append((match.group(1), int(match.group(2) or 1), path))
    ordered = [path for _, _, path in sorted(backups)]
    removed = atomic.prune_oldest(ordered, keep, protected={keep_also} if keep_also else set())
    if removed:
        log.info(
            "BACKUP_RETENTION=%d: removed %d older backup folder(s) from %s", keep, len(removed), upload_dir
        )
    return removed


def _same_backup(dest: Path, files: list[dict[str, Any]]) -> bool:
    return all((dest / f["name"]).is_file() and md5_file(dest / f["name"]) == f["md5"] for f in files) and {
        p.name for p in dest.iterdir()
    } == {f["name"] for f in files}


def _upload_to_drive(
    version: str, registry: Registry, config: DriveConfig, backup_dir: Path, stamp: str
) -> DriveResult:
    previous = registry.read_meta(version).get("drive")

    def save(state: dict[str, Any]) -> None:
        registry.update_meta(version, drive=state)

    try:
        return upload_to_drive(
            [backup_dir / name for name in UPLOADED_FILES],
            stamp,
            config,
            previous=previous if isinstance(previous, dict) else None,
            on_progress=save,
        )
    except StorageError as exc:
        exc.backup_dir = str(backup_dir)
        failed = registry.read_meta(version).get("drive") or {}
        registry.update_meta(
            version, drive={**failed, "status": "failed", "step": exc.step, "error": str(exc)}
        )
        _record_upload(registry, version, stamp, backup_dir, {"status": "failed", "step": exc.step})
        log.error(
            "Google Drive upload of version %s failed at step %r after %d retries: %s; local backup at %s",
            version,
            exc.step,
            exc.retries,
            exc,
            backup_dir,
        )
        raise


def _record_upload(
    registry: Registry, version: str, stamp: str, backup_dir: Path, drive: dict[str, Any]
) -> None:
    """Append this upload to meta.json's ``uploads`` (the last few are kept)."""
    uploads = list(registry.read_meta(version).get("uploads") or [])
    uploads.append(
        {
            "timestamp": stamp,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "backup_dir": str(backup_dir),
            "drive_status": drive.get("status"),
            "drive_folder_id": drive.get("folder_id"),
        }
    )
    registry.update_meta(version, uploads=uploads[-_MAX_UPLOAD_RECORDS:])
