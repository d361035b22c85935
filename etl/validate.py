"""Step 2: validate the raw CSV against the schema, clean it, and split it by patient."""

from __future__ import annotations

import logging
import re
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


@dataclass
class PreparedData:
    """The clean dataset (integer columns, original file line numbers as index) and what was dropped."""

    frame: pd.DataFrame
    counts: RowCounts
    class_counts: dict[int, int] = field(default_factory=dict)


def _listed(items: list[int]) -> str:
    shown = items[:_MAX_EXAMPLES]
    more = len(items) - len(shown)
    return ", ".join(str(i) for i in shown) + (f" and {more} more" if more > 0 else "")


def _lines(rows: pd.Index | list[int]) -> str:
    """Render row labels (0-based data rows) as file line numbers (the header is line 1)."""
    return "line(s) " + _listed([int(r) + 2 for r in list(rows)])


def read_csv(path: Path, *, max_rows: int | None = None) -> pd.DataFrame:
    """Parse the CSV as strings so that every value is checked by us, not guessed by pandas.

    Parsing stops after ``max_rows`` + 1 data rows, so an oversized file is refused without reading it all.

    Raises:
        DataFormatError: not a readable CSV (the message gives the line, never the file's bytes).
        DataValidationError: more than ``max_rows`` data rows.
    """
    try:
        frame = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=True,
            na_values=["NA", "?", ""],
            nrows=None if max_rows is None else max_rows + 1,
        )
    except pd.errors.EmptyDataError:
        raise DataFormatError("the data is not a readable CSV: it has no header line") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"the data is not a readable CSV: it is not UTF-8 text (undecodable byte at offset {exc.start})"
        ) from None
    except ValueError as exc:  # pandas' ParserError and friends; their text may quote the file
        where = re.search(r"\b(line|row) (\d+)", str(exc))
        at = f" at {where.group(1)} {where.group(2)}" if where else ""
        raise DataFormatError(
            f"the data is not a readable CSV{at}: a row has the wrong number of fields, or quoting is broken"
        ) from None
    if max_rows is not None and len(frame) > max_rows:
        raise DataValidationError(
            f"the data has more than MAX_DATA_ROWS={max_rows} rows; raise MAX_DATA_ROWS or use a smaller file"
        )
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
            offending file lines. It names columns only by our schema's names and never quotes a value
            or anything else from the file: a hostile source must not get its bytes echoed back.
    """
    columns = [str(c).strip() for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    missing = [c for c in EXPECTED_COLUMNS if c not in columns]
    extra = [i for i, c in enumerate(columns, start=1) if c not in EXPECTED_COLUMNS]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if extra:
            parts.append(f"{len(extra)} unexpected column(s) at header position(s) {_listed(extra)}")
        raise DataValidationError(f"{'; '.join(parts)}; expected exactly {list(EXPECTED_COLUMNS)}")
    duplicated_names = sorted({c for c in columns if columns.count(c) > 1})  # all are our names by now
    if duplicated_names:
        raise DataValidationError(f"duplicate column(s) {duplicated_names}")
    raw_rows = len(frame)
    if raw_rows == 0:
        raise DataValidationError("the file has a header but no data rows")

    numeric = pd.DataFrame(index=frame.index)
    for col in _INT_COLUMNS:
        text = frame[col].str.strip()
        values = pd.to_numeric(text, errors="coerce")
        bad = values.isna() & text.notna()
        if bad.any():
            raise DataValidationError(
                f"column {col!r} has {int(bad.sum())} non-numeric value(s) at {_lines(frame.index[bad])}"
            )
        # inf, or beyond 2**53 (float64 stops being exact, int64 would wrap): not a usable integer
        huge = values.notna() & (values.abs() > 2**53)
        if huge.any():
            raise DataValidationError(
                f"column {col!r} has {int(huge.sum())} non-finite or too large value(s) "
                f"at {_lines(frame.index[huge])}"
            )
        fractional = values.notna() & (values != np.floor(values.fillna(0)))
        if fractional.any():
            raise DataValidationError(
                f"column {col!r} has {int(fractional.sum())} non-integer value(s) "
                f"at {_lines(frame.index[fractional])}"
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
        rows = [int(i) for i in group["index"].dropna().tolist()]
        if column == TARGET_COLUMN:
            problem = "must be 0 (benign) or 1 (malignant)"
        elif column in FEATURE_COLUMNS:
            problem = f"must be an integer from {FEATURE_MIN} to {FEATURE_MAX}"
        else:
            problem = f"failed {check}"
        messages.append(f"column {column!r} {problem}: {len(group)} value(s) out of range at {_lines(rows)}")
    return "; ".join(messages)


def load_prepared(path: Path, *, max_rows: int | None = None) -> PreparedData:
    """Read and validate a raw CSV file in one call (at most ``max_rows`` data rows)."""
    return validate_and_preprocess(read_csv(path, max_rows=max_rows))


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
