"""The registry's names: how a version is named, and where its files are in the artifact store.

The artifact store (etl/artifacts.py) holds every file under a key, written once and never changed::

    <version>/model.json            the served model as plain data (weights, calibration, threshold)
    <version>/model.joblib          the same model as a scikit-learn object, for people to download
    <version>/holdout.csv           the version's held-out rows
    <version>/nested.csv            the nested-CV predictions (one row per outer fold and row)
    <version>/nested_models.json    the nested-CV fold models (their disagreement is the gate's noise)
    <version>/reports/<id>/...      one evaluation report (report.html, report/<figure>.png) per writing
    reference/<sha256>.csv          a pinned reference set (etl/reference.py)
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from typing import Any

from etl.hashing import sha256_bytes
from etl.registry_db.store import gate_passed

VERSION_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")  # use fullmatch: `$` would take a trailing newline
MODEL_JSON, MODEL_FILE, META_FILE, METRICS_FILE = "model.json", "model.joblib", "meta.json", "metrics.json"
HOLDOUT_FILE, NESTED_FILE, NESTED_MODELS_FILE = "holdout.csv", "nested.csv", "nested_models.json"
REQUIRED_FILES = (MODEL_JSON, MODEL_FILE, HOLDOUT_FILE)
REPORTS = "reports"  # <version>/reports/<id>/: one evaluation report per writing
REFERENCE_PREFIX = "reference"
# the parts of a version's metadata that change after it is published (etl/upload_results.py)
MUTABLE_META = ("drive", "uploads")


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


def name_time(name: str) -> float | None:
    """Unix time encoded in a ``new_version_name``, or None."""
    try:
        return datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
