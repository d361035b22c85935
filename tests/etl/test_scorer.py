"""etl.scorer: the fast scorer equals predict_proba within 1e-9 on the bundled data and on any valid row."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from etl.errors import ArtifactIntegrityError
from etl.features import FEATURE_COLUMNS
from etl.scorer import LinearScorer, verified_scorer
from etl.train import build_pipeline
from etl.validate import load_prepared, split_train_test
from tests.conftest import BUNDLED_CSV
from tests.pipeline_support import bundled_complete_rows

TOL = 1e-9


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    train, _ = split_train_test(load_prepared(BUNDLED_CSV).frame, test_size=0.2, seed=42)
    return build_pipeline(42).fit(train[list(FEATURE_COLUMNS)].to_numpy(dtype=float), train["Class"])


def test_linear_scorer_matches_predict_proba_on_every_shared_row(pipeline: Pipeline):
    X = bundled_complete_rows()[list(FEATURE_COLUMNS)].to_numpy(dtype=float)
    assert len(X) == 683  # every row with all nine features (699 minus the 16 with NA)
    expected = pipeline.predict_proba(X)[:, 1]
    scorer = LinearScorer.from_pipeline(pipeline)

    fast = scorer.proba(X)
    one = np.array([scorer.proba_one([int(v) for v in row]) for row in X])

    assert np.max(np.abs(fast - expected)) <= TOL
    assert np.max(np.abs(one - expected)) <= TOL
    assert np.array_equal(fast >= 0.5, expected >= 0.5)


_row = st.lists(st.integers(1, 10), min_size=9, max_size=9)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(_row, min_size=1, max_size=40))
def test_linear_scorer_matches_predict_proba_on_generated_rows(pipeline: Pipeline, rows: list[list[int]]):
    X = np.array(rows, dtype=float)
    expected = pipeline.predict_proba(X)[:, 1]
    scorer = LinearScorer.from_pipeline(pipeline)
    assert np.max(np.abs(scorer.proba(X) - expected)) <= TOL
    for row, p in zip(rows, expected, strict=True):
        assert abs(scorer.proba_one(row) - p) <= TOL


def test_linear_scorer_is_stable_for_extreme_scores():
    scorer = LinearScorer(np.ones(9), 0.0)
    X = np.array([[1000.0] * 9, [-1000.0] * 9, [0.0] * 9])
    np.testing.assert_allclose(scorer.proba(X), [1.0, 0.0, 0.5])
    assert scorer.proba_one([1000] * 9) == 1.0 and scorer.proba_one([-1000] * 9) == 0.0


@pytest.mark.parametrize(
    "steps",
    [
        [("scaler", MinMaxScaler()), ("classifier", DecisionTreeClassifier())],
        [("scaler", StandardScaler())],
    ],
    ids=["wrong-steps", "one-step"],
)
def test_linear_scorer_refuses_other_pipelines(steps: list):
    X = np.array([[1.0] * 9, [9.0] * 9])
    pipe = Pipeline(steps)
    if len(steps) == 2:
        pipe.fit(X, [0, 1])
    with pytest.raises(ArtifactIntegrityError, match="not a StandardScaler \\+ LogisticRegression"):
        LinearScorer.from_pipeline(pipe)


def test_verified_scorer_accepts_the_real_pipeline(pipeline: Pipeline):
    scorer = verified_scorer(pipeline)
    assert np.allclose(scorer.weights, LinearScorer.from_pipeline(pipeline).weights)


def test_verified_scorer_refuses_a_scorer_that_drifts(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch):
    real = LinearScorer.from_pipeline.__func__  # type: ignore[attr-defined]

    def off_by_a_bit(cls: type[LinearScorer], pipe: Pipeline) -> LinearScorer:
        s = real(cls, pipe)
        return LinearScorer(s.weights, s.bias + 1e-6)

    monkeypatch.setattr(LinearScorer, "from_pipeline", classmethod(off_by_a_bit))
    with pytest.raises(ArtifactIntegrityError, match="differs from predict_proba"):
        verified_scorer(pipeline)
