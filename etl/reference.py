"""The reference set: trusted rows, fixed by the operator, on which every candidate and the served model are
judged side by side.

A retrain's data can change or be corrupted (a third-party CSV, a wrong label column); the reference set
cannot: it lives in the registry (its CSV in the artifact store under its sha256, its pin in the database, so
every host judges on the same rows), and changes only through ``python -m etl reference set PATH`` (or
``reset``). Its patients (``Id``) are removed from every training, so neither the candidate nor the served
model is judged on rows it trained on.

By default it is seeded from the bundled dataset: one patient-grouped, stratified fifth of it
(``REFERENCE_SEED``), about 136 rows of which 48 malignant.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from etl.errors import DataValidationError
from etl.features import EXPECTED_COLUMNS, ID_COLUMN, TARGET_COLUMN
from etl.settings import BUNDLED_DATA_PATH

if TYPE_CHECKING:
    from etl.registry import Registry

log = logging.getLogger(__name__)

REFERENCE_SEED = 2026
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


def _serialise(frame: pd.DataFrame) -> bytes:
    return frame.loc[:, list(EXPECTED_COLUMNS)].to_csv(index=False).encode()


def _check(frame: pd.DataFrame) -> None:
    counts = frame[TARGET_COLUMN].value_counts()
    if int(counts.get(0, 0)) < MIN_PER_CLASS or int(counts.get(1, 0)) < MIN_PER_CLASS:
        raise DataValidationError(
            f"a reference set needs at least {MIN_PER_CLASS} rows of each class; got "
            f"{int(counts.get(0, 0))} benign and {int(counts.get(1, 0))} malignant"
        )


def write_reference(registry: Registry, frame: pd.DataFrame, source: str) -> ReferenceSet:
    """Store ``frame`` (clean rows) as the reference set and pin its sha256."""
    _check(frame)
    pin = registry.pin_reference(_serialise(frame), len(frame), source)
    log.info("reference set pinned: %d rows, sha256 %s (%s)", len(frame), pin["sha256"][:12], source)
    return ReferenceSet(frame.reset_index(drop=True), pin["sha256"], source)


def seed_frame(clean: pd.DataFrame) -> pd.DataFrame:
    """One patient-grouped, stratified fifth of a clean dataset (the default reference set)."""
    from etl.train import arrays, grouped_folds

    _, y, groups = arrays(clean)
    _, chosen = grouped_folds(y, groups, 5, REFERENCE_SEED)[0]
    return clean.iloc[chosen].sort_values(ID_COLUMN, kind="stable").reset_index(drop=True)


def load_reference(registry: Registry) -> ReferenceSet | None:
    """The pinned reference set, or None when none has been pinned yet.

    Raises:
        ArtifactIntegrityError: its CSV is missing or does not match its pinned sha256.
    """
    pin = registry.reference_pin()
    if pin is None:
        return None
    data = registry.read_reference(pin)
    return ReferenceSet(pd.read_csv(io.BytesIO(data)), str(pin["sha256"]), str(pin.get("source", "")))


def seed_reference(registry: Registry, source: Path = BUNDLED_DATA_PATH) -> ReferenceSet:
    """Pin the default reference set, seeded from ``source`` (the bundled CSV)."""
    from etl.validate import load_prepared

    clean = load_prepared(source).frame
    return write_reference(registry, seed_frame(clean), f"seeded from the bundled {source.name}")


def ensure_reference(registry: Registry) -> ReferenceSet:
    """The pinned reference set; on first use, seed it from the bundled CSV."""
    existing = load_reference(registry)
    return existing if existing is not None else seed_reference(registry)


def reference_from_file(registry: Registry, path: Path) -> ReferenceSet:
    """Validate a CSV with the dataset's columns and pin it as the reference set (all its clean rows)."""
    from etl.validate import load_prepared

    clean = load_prepared(path).frame
    return write_reference(registry, clean.reset_index(drop=True), f"set from {path.name}")
