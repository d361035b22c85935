"""Step 5: back up a version's artifacts to upload/<YYYYMMDD_HHMMSS>/ (Google Drive: see etl/drive.py)."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etl.errors import NotEvaluatedError
from etl.io import TMP_PREFIX, fsync_dir
from etl.registry import METRICS_FILE, MODEL_FILE, Registry
from etl.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class UploadResult:
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
    """Copy the version's model.joblib and metrics.json into upload/<YYYYMMDD_HHMMSS>/ atomically."""
    vdir = registry.version_dir(version)
    if not (vdir / METRICS_FILE).is_file():
        raise NotEvaluatedError(f"version {version} has not been evaluated: run evaluate before upload")
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d_%H%M%S")
    dest = settings.upload_dir / stamp
    staging = settings.upload_dir / f"{TMP_PREFIX}{stamp}"
    settings.upload_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    files = []
    for name in (MODEL_FILE, METRICS_FILE):
        shutil.copyfile(vdir / name, staging / name)
        files.append({"name": name, "size": (staging / name).stat().st_size, "path": str(dest / name)})
    fsync_dir(staging)
    os.replace(staging, dest) if not dest.exists() else shutil.rmtree(staging)
    log.info("backed up version %s to %s", version, dest)
    return UploadResult(
        version, stamp, str(Path(dest)), files, {"status": "skipped", "reason": "GDRIVE_FOLDER_ID is not set"}
    )
