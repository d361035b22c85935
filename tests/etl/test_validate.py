"""etl.validate: the bundled CSV's quirks, every bad-data case on small hand-built CSVs, and the split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from etl.errors import DataFormatError, DataValidationError
from etl.features import EXPECTED_COLUMNS, FEATURE_COLUMNS
from etl.validate import load_prepared, split_train_test
from tests.pipeline_support import read_bundled, synthetic_rows, write_csv

# --- the bundled CSV -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_shared():
    from tests.conftest import BUNDLED_CSV

    return load_prepared(BUNDLED_CSV)


def test_validate_bundled_csv_counts_match_independent_pandas(prepared_shared):
    raw = read_bundled()  # pandas' own reading: NA -> NaN, quoted numbers parsed
    missing = int(raw.isna().any(axis=1).sum())
    complete = raw.dropna()
    duplicates = int(complete.duplicated().sum())

    counts = prepared_shared.counts
    assert counts.raw == len(raw) == 699
    assert counts.missing_dropped == missing == 16  # README: 16 rows with NA in Bare.nuclei
    assert counts.duplicates_dropped == duplicates == 8  # README: 8 exact duplicates
    assert counts.clean == len(raw) - missing - duplicates == len(prepared_shared.frame)
    assert set(raw.columns[raw.isna().any()]) == {"Bare.nuclei"}


def test_validate_bundled_csv_frame_equals_independent_cleaning(prepared_shared):
    expected = read_bundled().dropna().drop_duplicates().astype("int64")
    frame = prepared_shared.frame
    assert list(frame.columns) == list(EXPECTED_COLUMNS)
    assert all(str(t) == "int64" for t in frame.dtypes)
    pd.testing.assert_frame_equal(frame, expected[list(EXPECTED_COLUMNS)])
    clean_classes = expected["Class"].value_counts().to_dict()
    assert prepared_shared.class_counts == {0: clean_classes[0], 1: clean_classes[1]}


def test_validate_bundled_csv_keeps_repeated_patient_ids(prepared_shared):
    ids = read_bundled()["Id"]
    # README's "54": rows whose Id was already seen (46 distinct Ids occur more than once)
    assert len(ids) - ids.nunique() == 54
    expected = read_bundled().dropna().drop_duplicates()["Id"]
    kept = prepared_shared.frame["Id"]
    assert int(kept.duplicated().sum()) == int(expected.duplicated().sum()) > 0  # repeat samples are kept


# --- hand-built CSVs ----------------------------------------------------------------------------


def _rows() -> list[list[object]]:
    return [list(r) for r in synthetic_rows(6)]


def test_validate_small_valid_csv_counts_missing_and_duplicates(tmp_path: Path):
    rows = _rows()
    rows[1][6] = "NA"  # Bare.nuclei missing (as in the shared file)
    rows[2][3] = "?"  # another missing marker
    rows.append(list(rows[4]))  # exact duplicate
    rows.append(list(rows[5]))
    rows.append(list(rows[5]))
    prepared = load_prepared(write_csv(tmp_path / "d.csv", rows))
    assert prepared.counts.raw == 15
    assert prepared.counts.missing_dropped == 2
    assert prepared.counts.duplicates_dropped == 3
    assert prepared.counts.clean == 10 == len(prepared.frame)
    assert prepared.class_counts == {0: 4, 1: 6}
    assert prepared.frame.dtypes.map(str).eq("int64").all()


def test_validate_same_id_with_different_values_is_not_a_duplicate(tmp_path: Path):
    rows = _rows()
    second_sample = list(rows[0])
    second_sample[1] = 1 if rows[0][1] != 1 else 2
    rows.append(second_sample)
    prepared = load_prepared(write_csv(tmp_path / "d.csv", rows))
    assert prepared.counts.duplicates_dropped == 0
    assert prepared.counts.clean == 13


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ([c for c in EXPECTED_COLUMNS if c != "Mitoses"], "missing column(s) ['Mitoses']"),
        ([c for c in EXPECTED_COLUMNS if c != "Id"], "missing column(s) ['Id']"),
        ([*EXPECTED_COLUMNS, "Notes"], "1 unexpected column(s) at header position(s) 12"),
        (["Id", *FEATURE_COLUMNS, "Diagnosis"], "missing column(s) ['Class']"),
    ],
    ids=["missing-feature", "missing-id", "extra", "renamed-target"],
)
def test_validate_wrong_columns_raise_naming_the_column(tmp_path: Path, header: list[str], expected: str):
    rows = [[*r[: len(header)], *(["x"] * (len(header) - len(r)))] for r in _rows()]
    with pytest.raises(DataValidationError) as err:
        load_prepared(write_csv(tmp_path / "d.csv", rows, header=header))
    assert expected in str(err.value)
    assert "expected exactly" in str(err.value)


@pytest.mark.parametrize(
    ("row", "col", "value", "expected"),
    [
        (2, 4, "abc", "column 'Marg.adhesion' has 1 non-numeric value(s) at line(s) 4"),
        (0, 1, "five", "column 'Cl.thickness' has 1 non-numeric value(s) at line(s) 2"),
        (5, 0, "P-17", "column 'Id' has 1 non-numeric value(s) at line(s) 7"),
        (3, 10, "benign", "column 'Class' has 1 non-numeric value(s) at line(s) 5"),
        (2, 4, "2.5", "column 'Marg.adhesion' has 1 non-integer value(s) at line(s) 4"),
        (7, 9, "1.1", "column 'Mitoses' has 1 non-integer value(s) at line(s) 9"),
        (
            3,
            1,
            0,
            "column 'Cl.thickness' must be an integer from 1 to 10: 1 value(s) out of range at line(s) 5",
        ),
        (5, 9, 11, "column 'Mitoses' must be an integer from 1 to 10: 1 value(s) out of range at line(s) 7"),
        (
            4,
            6,
            -3,
            "column 'Bare.nuclei' must be an integer from 1 to 10: 1 value(s) out of range at line(s) 6",
        ),
        (
            2,
            10,
            2,
            "column 'Class' must be 0 (benign) or 1 (malignant): 1 value(s) out of range at line(s) 4",
        ),
    ],
    ids=[
        "non-numeric",
        "non-numeric-first-line",
        "non-numeric-id",
        "non-numeric-class",
        "non-integer",
        "non-integer-mitoses",
        "range-0",
        "range-11",
        "range-negative",
        "class-2",
    ],
)
def test_validate_bad_value_raises_naming_column_and_line(
    tmp_path: Path, row: int, col: int, value: object, expected: str
):
    rows = _rows()
    rows[row][col] = value
    with pytest.raises(DataValidationError) as err:
        load_prepared(write_csv(tmp_path / "d.csv", rows))
    assert expected in str(err.value)
    assert "got" not in str(err.value) and (not isinstance(value, str) or value not in str(err.value))


@pytest.mark.parametrize(
    ("row", "col", "value"),
    [(2, 4, "inf"), (3, 6, "-Infinity"), (1, 0, "99999999999999999999"), (4, 10, "1e30")],
    ids=["inf", "minus-infinity", "id-beyond-int64", "huge-class"],
)
def test_validate_non_finite_or_huge_value_raises_validation_error(
    tmp_path: Path, row: int, col: int, value: str
):
    rows = _rows()
    rows[row][col] = value
    with pytest.raises(DataValidationError) as err:  # not a raw pandas casting error, not a wrapped int
        load_prepared(write_csv(tmp_path / "d.csv", rows))
    assert f"column {EXPECTED_COLUMNS[col]!r}" in str(err.value)
    assert f"1 non-finite or too large value(s) at line(s) {row + 2}" in str(err.value)
    assert value not in str(err.value)


def test_validate_line_numbers_survive_dropped_rows(tmp_path: Path):
    rows = _rows()
    rows[0][6] = "NA"  # dropped first, so later rows keep their file line numbers
    rows[1] = list(rows[2])  # duplicate
    rows[8][2] = 11
    with pytest.raises(DataValidationError) as err:
        load_prepared(write_csv(tmp_path / "d.csv", rows))
    assert "column 'Cell.size' must be an integer from 1 to 10: 1 value(s) out of range at line(s) 10" in str(
        err.value
    )


def test_validate_many_bad_rows_lists_a_few_and_counts_the_rest(tmp_path: Path):
    rows = _rows()
    for r in rows:
        r[2] = 12
    with pytest.raises(DataValidationError) as err:
        load_prepared(write_csv(tmp_path / "d.csv", rows))
    assert "line(s) 2, 3, 4, 5, 6 and 7 more" in str(err.value)


def test_validate_header_only_raises(tmp_path: Path):
    with pytest.raises(DataValidationError) as err:
        load_prepared(write_csv(tmp_path / "d.csv", []))
    assert "no data rows" in str(err.value)


def test_validate_all_rows_missing_raises_no_rows(tmp_path: Path):
    rows = _rows()
    for r in rows:
        r[6] = "NA"
    with pytest.raises(DataValidationError) as err:
        load_prepared(write_csv(tmp_path / "d.csv", rows))
    assert "no rows left after dropping 12 row(s) with missing values" in str(err.value)


def test_validate_empty_file_raises_format_error(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"")
    with pytest.raises(DataFormatError) as err:
        load_prepared(path)
    assert "not a readable CSV: it has no header line" in str(err.value)


@pytest.mark.parametrize("only", [0, 1])
def test_validate_single_class_raises(tmp_path: Path, only: int):
    rows = [r for r in _rows() if r[10] == only]
    with pytest.raises(DataValidationError) as err:
        load_prepared(write_csv(tmp_path / "d.csv", rows))
    assert f"column 'Class' has a single class ({only}) in all 6 rows" in str(err.value)


# --- split --------------------------------------------------------------------------------------


def test_split_train_test_keeps_each_id_on_one_side(prepared_shared):
    train, test = split_train_test(prepared_shared.frame, test_size=0.2, seed=42)
    assert set(train["Id"]).isdisjoint(set(test["Id"]))
    assert len(train) + len(test) == len(prepared_shared.frame)
    assert set(train.index).isdisjoint(set(test.index))


@pytest.mark.parametrize("seed", [0, 7, 42, 2024])
def test_split_train_test_is_stratified(prepared_shared, seed: int):
    frame = prepared_shared.frame
    train, test = split_train_test(frame, test_size=0.2, seed=seed)
    overall = frame["Class"].mean()
    assert abs(test["Class"].mean() - overall) < 0.03
    assert abs(train["Class"].mean() - overall) < 0.03
    assert set(test["Id"]).isdisjoint(set(train["Id"]))


def test_split_train_test_same_seed_same_split(prepared_shared):
    a_train, a_test = split_train_test(prepared_shared.frame, test_size=0.2, seed=42)
    b_train, b_test = split_train_test(prepared_shared.frame, test_size=0.2, seed=42)
    assert list(a_test.index) == list(b_test.index)
    assert list(a_train.index) == list(b_train.index)
    _, c_test = split_train_test(prepared_shared.frame, test_size=0.2, seed=43)
    assert list(c_test.index) != list(a_test.index)  # the seed really drives it


@pytest.mark.parametrize("test_size", [0.1, 0.2, 0.25, 0.34])
def test_split_train_test_honours_test_size_approximately(prepared_shared, test_size: float):
    frame = prepared_shared.frame
    _, test = split_train_test(frame, test_size=test_size, seed=42)
    share = len(test) / len(frame)
    assert abs(share - 1 / round(1 / test_size)) < 0.03
    assert abs(share - test_size) < 0.05


def test_split_train_test_too_few_patients_raises(tmp_path: Path):
    prepared = load_prepared(write_csv(tmp_path / "d.csv", synthetic_rows(3)))
    with pytest.raises(DataValidationError) as err:
        split_train_test(prepared.frame, test_size=0.2, seed=42)
    assert "too few patients to split: need at least 5 distinct Ids per class" in str(err.value)
