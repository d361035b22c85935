"""Step 2: validate the raw CSV against the schema, clean it, and split it by patient."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors
from sklearn.model_selection import StratifiedGroupKFold

from etl.errors import DataFormatError, DataValidationError
from etl.features import EXPECTED_COLUMNS, FEATURE_COLUMNS, FEATURE_MAX, FEATURE_MIN, ID_COLUMN, TARGET_COLUMN

log = logging.getLogger(__name__)

_MAX_EXAMPLES = 5
_INT_COLUMNS = (ID_COLUMN, *FEATURE_COLUMNS, TARGET_COLUMN)

SCHEMA = pa.DataFrameSchema(
    {
        ID_COLUMN: pa.Column("int64", nullable=False),
        **{
            col: pa.Column("int64", pa.Check.in_range(FEATURE_MIN, FEATURE_MAX), nullable=False)
            for col in FEATURE_COLUMNS
        },
        TARGET_COLUMN: pa.Column("int64", pa.Check.isin([0, 1]), nullable=False),
    },
    strict=True,
    ordered=False,
)


@dataclass
class RowCounts:
    raw: int
    missing_dropped: int
    duplicates_dropped: int
    clean: int
    train: int = 0
    test: int = 0


@dataclass
class PreparedData:
    """The clean dataset (integer columns, original file line numbers as index) and what was dropped."""

    frame: pd.DataFrame
    counts: RowCounts
    class_counts: dict[int, int] = field(default_factory=dict)


def _lines(rows: pd.Index | list[int]) -> str:
    """Render row labels (0-based data rows) as file line numbers (the header is line 1)."""
    items = [int(r) + 2 for r in list(rows)[:_MAX_EXAMPLES]]
    more = len(rows) - len(items)
    text = ", ".join(str(i) for i in items)
    return f"line(s) {text}" + (f" and {more} more" if more > 0 else "")


def read_csv(path: Path) -> pd.DataFrame:
    """Parse the CSV as strings so that every value is checked by us, not guessed by pandas."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=True, na_values=["NA", "?", ""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataFormatError(f"{path.name} is not a readable CSV: {exc}") from None
    return frame


def validate_and_preprocess(frame: pd.DataFrame) -> PreparedData:
    """Check columns and values, coerce to integers, drop missing and duplicate rows.

    Args:
        frame: the raw table as read by :func:`read_csv` (all values strings or NaN).

    Returns:
        PreparedData with integer columns and the counts of dropped rows.

    Raises:
        DataValidationError: missing or extra columns, non-numeric or non-integer values, values out of
            range, no rows left, or a single class. The message names the column, the problem and a few
            offending file lines.
    """
    columns = [str(c).strip() for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    missing = [c for c in EXPECTED_COLUMNS if c not in columns]
    extra = [c for c in columns if c not in EXPECTED_COLUMNS]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if extra:
            parts.append(f"unexpected column(s) {extra}")
        raise DataValidationError(f"{'; '.join(parts)}; expected exactly {list(EXPECTED_COLUMNS)}")
    if len(columns) != len(set(columns)):
        raise DataValidationError(f"duplicate column names in {columns}")
    raw_rows = len(frame)
    if raw_rows == 0:
        raise DataValidationError("the file has a header but no data rows")

    numeric = pd.DataFrame(index=frame.index)
    for col in _INT_COLUMNS:
        text = frame[col].str.strip()
        values = pd.to_numeric(text, errors="coerce")
        bad = values.isna() & text.notna()
        if bad.any():
            sample = text[bad].head(3).tolist()
            raise DataValidationError(
                f"column {col!r} has non-numeric value(s) {sample} at {_lines(frame.index[bad])}"
            )
        # inf, or beyond 2**53 (float64 stops being exact, int64 would wrap): not a usable integer
        huge = values.notna() & (values.abs() > 2**53)
        if huge.any():
            sample = text[huge].head(3).tolist()
            raise DataValidationError(
                f"column {col!r} has non-finite or too large value(s) {sample} at {_lines(frame.index[huge])}"
            )
        fractional = values.notna() & (values != np.floor(values.fillna(0)))
        if fractional.any():
            sample = values[fractional].head(3).tolist()
            raise DataValidationError(
                f"column {col!r} has non-integer value(s) {sample} at {_lines(frame.index[fractional])}"
            )
        numeric[col] = values

    has_missing = numeric.isna().any(axis=1)
    missing_dropped = int(has_missing.sum())
    numeric = numeric[~has_missing].astype("int64")
    duplicated = numeric.duplicated(keep="first")
    duplicates_dropped = int(duplicated.sum())
    numeric = numeric[~duplicated]

    if numeric.empty:
        raise DataValidationError(f"no rows left after dropping {missing_dropped} row(s) with missing values")
    try:
        numeric = SCHEMA.validate(numeric, lazy=True)
    except SchemaErrors as exc:
        raise DataValidationError(_describe_schema_errors(exc)) from None

    value_counts = numeric[TARGET_COLUMN].value_counts().sort_index()
    class_counts = {int(str(k)): int(v) for k, v in value_counts.items()}
    if len(class_counts) < 2:
        only = next(iter(class_counts))
        raise DataValidationError(
            f"column 'Class' has a single class ({only}) in all {len(numeric)} rows; both 0 and 1 are needed"
        )
    counts = RowCounts(raw_rows, missing_dropped, duplicates_dropped, len(numeric))
    log.info(
        "validated %d raw rows: %d dropped for missing values, %d exact duplicates dropped, %d clean "
        "(benign %d, malignant %d)",
        raw_rows,
        missing_dropped,
        duplicates_dropped,
        len(numeric),
        class_counts.get(0, 0),
        class_counts.get(1, 0),
    )
    return PreparedData(numeric, counts, class_counts)


def _describe_schema_errors(exc: SchemaErrors) -> str:
    cases = exc.failure_cases
    messages = []
    for (column, check), group in cases.groupby(["column", "check"], sort=False, dropna=False):
        values = group["failure_case"].head(3).tolist()
        rows = [int(i) for i in group["index"].dropna().tolist()]
        if column == TARGET_COLUMN:
            problem = "must be 0 (benign) or 1 (malignant)"
        elif column in FEATURE_COLUMNS:
            problem = f"must be an integer from {FEATURE_MIN} to {FEATURE_MAX}"
        else:
            problem = f"failed {check}"
        messages.append(f"column {column!r} {problem}: got {values} at {_lines(rows)}")
    return "; ".join(messages)


def load_prepared(path: Path) -> PreparedData:
    """Read and validate a raw CSV file in one call."""
    return validate_and_preprocess(read_csv(path))


def parse_prepared(data: bytes) -> PreparedData:
    return validate_and_preprocess(pd.read_csv(io.BytesIO(data), dtype=str, na_values=["NA", "?", ""]))


def split_train_test(
    frame: pd.DataFrame, *, test_size: float = 0.2, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split so that every patient (``Id``) is on one side only, stratified by ``Class``, seeded.

    The held-out side is one fold of a ``StratifiedGroupKFold`` with ``round(1 / test_size)`` folds,
    so the held-out share is close to, not exactly, ``test_size``.

    Raises:
        DataValidationError: too few patients of a class to hold any out.
    """
    n_splits = max(2, round(1 / test_size))
    y = frame[TARGET_COLUMN].to_numpy()
    groups = frame[ID_COLUMN].to_numpy()
    per_class_groups = frame.groupby(TARGET_COLUMN)[ID_COLUMN].nunique()
    if int(per_class_groups.min()) < n_splits:
        raise DataValidationError(
            f"too few patients to split: need at least {n_splits} distinct Ids per class, "
            f"got {per_class_groups.to_dict()}"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, test_idx = next(splitter.split(np.zeros(len(frame)), y, groups))
    train, test = frame.iloc[train_idx], frame.iloc[test_idx]
    if train[TARGET_COLUMN].nunique() < 2 or test[TARGET_COLUMN].nunique() < 2:
        raise DataValidationError("the split left a side with a single class; add more rows of each class")
    return train, test
