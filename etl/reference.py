"""The reference set: trusted rows, fixed by the operator, on which every candidate and the served model are
judged side by side.

A retrain's data can change or be corrupted (a third-party CSV, a wrong label column); the reference set
cannot: it lives with the registry (``RESULTS_DIR/reference/reference.csv``), pinned by its sha256 in
``reference.json``, and changes only through ``python -m etl reference set PATH`` (or ``reset``). Its
patients (``Id``) are removed from every training, so neither the candidate nor the served model is judged
on rows it trained on.

By default it is seeded from the bundled dataset: one patient-grouped, stratified fifth of it
(``REFERENCE_SEED``), about 136 rows of which 48 malignant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from etl import atomic
from etl.errors import ArtifactIntegrityError, DataValidationError
from etl.features import EXPECTED_COLUMNS, ID_COLUMN, TARGET_COLUMN
from etl.hashing import sha256_bytes
from etl.settings import BUNDLED_DATA_PATH

log = logging.getLogger(__name__)

REFERENCE_SEED = 2026
REFERENCE_DIR, REFERENCE_FILE, REFERENCE_PIN = "reference", "reference.csv", "reference.json"
MIN_PER_CLASS = 10


@dataclass(frozen=True)
class ReferenceSet:
    frame: pd.DataFrame
    sha256: str
    source: str

    @property
    def ids(self) -> set[int]:
        return {int(v) for v in self.frame[ID_COLUMN].tolist()}

    def describe(self) -> dict[str, Any]:
        y = self.frame[TARGET_COLUMN]
        return {
            "sha256": self.sha256,
            "rows": len(self.frame),
            "malignant": int((y == 1).sum()),
            "benign": int((y == 0).sum()),
            "patients": int(self.frame[ID_COLUMN].nunique()),
            "source": self.source,
        }


def _paths(results_dir: Path) -> tuple[Path, Path]:
    folder = Path(results_dir) / REFERENCE_DIR
    return folder / REFERENCE_FILE, folder / REFERENCE_PIN


def _serialise(frame: pd.DataFrame) -> bytes:
    return frame.loc[:, list(EXPECTED_COLUMNS)].to_csv(index=False).encode()


def _check(frame: pd.DataFrame) -> None:
    counts = frame[TARGET_COLUMN].value_counts()
    if int(counts.get(0, 0)) < MIN_PER_CLASS or int(counts.get(1, 0)) < MIN_PER_CLASS:
        raise DataValidationError(
            f"a reference set needs at least {MIN_PER_CLASS} rows of each class; got "
            f"{int(counts.get(0, 0))} benign and {int(counts.get(1, 0))} malignant"
        )


def write_reference(results_dir: Path, frame: pd.DataFrame, source: str) -> ReferenceSet:
    """Store ``frame`` (clean rows) as the reference set and pin its sha256."""
    _check(frame)
    data = _serialise(frame)
    digest = sha256_bytes(data)
    csv_path, pin_path = _paths(results_dir)
    atomic.write_bytes(csv_path, data)
    atomic.write_json(
        pin_path,
        {
            "sha256": digest,
            "rows": len(frame),
            "source": source,
            "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    log.info("reference set pinned: %d rows, sha256 %s (%s)", len(frame), digest[:12], source)
    return ReferenceSet(frame.reset_index(drop=True), digest, source)


def seed_frame(clean: pd.DataFrame) -> pd.DataFrame:
    """One patient-grouped, stratified fifth of a clean dataset (the default reference set)."""
    from etl.train import arrays, grouped_folds

    _, y, groups = arrays(clean)
    _, chosen = grouped_folds(y, groups, 5, REFERENCE_SEED)[0]
    return clean.iloc[chosen].sort_values(ID_COLUMN, kind="stable").reset_index(drop=True)


def load_reference(results_dir: Path) -> ReferenceSet | None:
    """The pinned reference set, or None when none has been stored yet.

    Raises:
        ArtifactIntegrityError: the file does not match its pinned sha256 (changed outside the commands).
    """
    csv_path, pin_path = _paths(results_dir)
    if not pin_path.is_file():
        return None
    pin = atomic.read_json(pin_path)
    try:
        data = csv_path.read_bytes()
    except FileNotFoundError:
        raise ArtifactIntegrityError(
            f"the reference set {csv_path} is missing but pinned in {pin_path}"
        ) from None
    digest = sha256_bytes(data)
    if digest != pin.get("sha256"):
        raise ArtifactIntegrityError(
            f"the reference set {csv_path} does not match the sha256 pinned in {pin_path}; it was changed "
            "outside `python -m etl reference set`: restore it or pin a new one"
        )
    frame = pd.read_csv(csv_path)
    return ReferenceSet(frame, digest, str(pin.get("source", "")))


def seed_reference(results_dir: Path, source: Path = BUNDLED_DATA_PATH) -> ReferenceSet:
    """Pin the default reference set, seeded from ``source`` (the bundled CSV)."""
    from etl.validate import load_prepared

    clean = load_prepared(source).frame
    return write_reference(results_dir, seed_frame(clean), f"seeded from the bundled {source.name}")


def ensure_reference(results_dir: Path) -> ReferenceSet:
    """The pinned reference set; on first use, seed it from the bundled CSV."""
    existing = load_reference(results_dir)
    return existing if existing is not None else seed_reference(results_dir)


def reference_from_file(results_dir: Path, path: Path) -> ReferenceSet:
    """Validate a CSV with the dataset's columns and pin it as the reference set (all its clean rows)."""
    from etl.validate import load_prepared

    clean = load_prepared(path).frame
    return write_reference(results_dir, clean.reset_index(drop=True), f"set from {path.name}")
