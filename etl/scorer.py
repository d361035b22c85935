"""The served model as plain data: nine weights, a bias, a calibration and a threshold (``model.json``).

StandardScaler followed by LogisticRegression is one affine map: folding the scaler into the coefficients
gives the decision value ``z = x . w + b`` with ``w = coef / scale`` and
``b = intercept - sum(coef * mean / scale)``. The calibration then maps ``z`` to P(malignant):

- ``none``: the logistic ``1 / (1 + exp(-z))`` (scikit-learn's ``predict_proba``);
- ``sigmoid``: Platt scaling ``1 / (1 + exp(a z + b))``, folded into the weights (still one dot product);
- ``isotonic``: a piecewise-linear map, ``np.interp`` over the fitted breakpoints (clipped at the ends).

This module needs numpy only: the service builds its model from ``model.json`` and never unpickles
anything. ``check_parity`` (used at training, where scikit-learn is loaded anyway) proves the model equals
the downloadable ``model.joblib`` within 1e-9 before the version is registered.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from etl.errors import ArtifactIntegrityError
from etl.features import FEATURE_COLUMNS, FEATURE_MAX, FEATURE_MIN

PARITY_TOLERANCE = 1e-9
MODEL_FORMAT = "bcd-linear-model/1"


def _logistic(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _logistic_array(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


@dataclass(frozen=True)
class Calibration:
    """How a decision value becomes a probability (see the module docstring)."""

    kind: str
    a: float = 0.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    @classmethod
    def none(cls) -> Calibration:
        return cls("none")

    @classmethod
    def sigmoid(cls, a: float, b: float) -> Calibration:
        return cls("sigmoid", a=a, b=b)

    @classmethod
    def isotonic(cls, x: Sequence[float], y: Sequence[float]) -> Calibration:
        return cls("isotonic", x=tuple(float(v) for v in x), y=tuple(float(v) for v in y))

    def apply(self, decision: np.ndarray) -> np.ndarray:
        """P(malignant) for an array of decision values."""
        if self.kind == "isotonic":
            return np.interp(
                decision, self.x, self.y
            )  # np.interp clips at the ends, like out_of_bounds="clip"
        if self.kind == "sigmoid":
            return _logistic_array(-(self.a * decision + self.b))
        return _logistic_array(decision)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "sigmoid":
            return {"kind": "sigmoid", "a": self.a, "b": self.b}
        if self.kind == "isotonic":
            return {"kind": "isotonic", "x": list(self.x), "y": list(self.y)}
        return {"kind": "none"}

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        if not isinstance(data, dict):
            raise ValueError("calibration must be an object")
        kind = data.get("kind")
        if kind == "none":
            return cls.none()
        if kind == "sigmoid":
            a, b = _finite(data.get("a"), "calibration.a"), _finite(data.get("b"), "calibration.b")
            return cls.sigmoid(a, b)
        if kind == "isotonic":
            x, y = data.get("x"), data.get("y")
            if not isinstance(x, list) or not isinstance(y, list) or not 1 <= len(x) == len(y) <= 10_000:
                raise ValueError("isotonic calibration needs lists x and y of the same length (1-10000)")
            xs = [_finite(v, "calibration.x") for v in x]
            ys = [_finite(v, "calibration.y") for v in y]
            if any(b < a for a, b in itertools.pairwise(xs)) or any(b < a for a, b in itertools.pairwise(ys)):
                raise ValueError("isotonic calibration breakpoints must be non-decreasing")
            if not all(0.0 <= v <= 1.0 for v in ys):
                raise ValueError("isotonic calibration values must lie in [0, 1]")
            return cls.isotonic(xs, ys)
        raise ValueError("calibration kind must be none, sigmoid or isotonic")


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number")
    return float(value)


@dataclass(frozen=True)
class LinearModel:
    """P(malignant) for rows of the nine features in the model's column order, and the decision threshold.

    ``weights``/``bias`` give the decision value before calibration; for ``sigmoid`` the calibration is
    folded in at construction (``fast_weights``/``fast_bias`` then give the logit of the answer directly).
    """

    weights: tuple[float, ...]
    bias: float
    calibration: Calibration
    threshold: float
    fast_weights: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))
    fast_bias: float = field(repr=False, compare=False, default=0.0)

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        b = self.bias
        if (
            self.calibration.kind == "sigmoid"
        ):  # p = logistic(-(a z + b')) = logistic(x . (-a w) - (a b + b'))
            w, b = -self.calibration.a * w, -(self.calibration.a * b + self.calibration.b)
        object.__setattr__(self, "fast_weights", w)
        object.__setattr__(self, "fast_bias", float(b))
        object.__setattr__(self, "_w_list", [float(v) for v in w])

    # -- scoring -------------------------------------------------------------------------------------
    def proba(self, X: np.ndarray) -> np.ndarray:
        z = X @ self.fast_weights + self.fast_bias
        if self.calibration.kind == "isotonic":
            return np.interp(z, self.calibration.x, self.calibration.y)
        return _logistic_array(z)

    def proba_one(self, row: Sequence[int | float]) -> float:
        z = self.fast_bias
        for w, v in zip(self._w_list, row, strict=True):  # type: ignore[attr-defined]
            z += w * v
        if self.calibration.kind == "isotonic":
            return _interp_one(z, self.calibration.x, self.calibration.y)
        return _logistic(z)

    # -- plain data ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "features": list(FEATURE_COLUMNS),
            "weights": list(self.weights),
            "bias": self.bias,
            "calibration": self.calibration.to_dict(),
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, data: Any) -> LinearModel:
        """Build from ``model.json``'s content, refusing anything that is not exactly that shape.

        Raises:
            ArtifactIntegrityError: wrong format, features, lengths, or a non-finite number.
        """
        try:
            if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
                raise ValueError(f"not a {MODEL_FORMAT} document")
            if data.get("features") != list(FEATURE_COLUMNS):
                raise ValueError("its features are not the nine expected ones in order")
            weights = data.get("weights")
            if not isinstance(weights, list) or len(weights) != len(FEATURE_COLUMNS):
                raise ValueError(f"weights must be a list of {len(FEATURE_COLUMNS)} numbers")
            threshold = _finite(data.get("threshold"), "threshold")
            if not 0.0 <= threshold <= 1.0:
                raise ValueError("threshold must lie in [0, 1]")
            return cls(
                tuple(_finite(w, "weights") for w in weights),
                _finite(data.get("bias"), "bias"),
                Calibration.from_dict(data.get("calibration")),
                threshold,
            )
        except ValueError as exc:
            raise ArtifactIntegrityError(f"model.json is not a valid model: {exc}") from None

    @classmethod
    def from_pipeline(cls, pipeline: Any, calibration: Calibration, threshold: float) -> LinearModel:
        """Fold a fitted StandardScaler + LogisticRegression pipeline into weights and a bias (training)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        steps = list(getattr(pipeline, "named_steps", {}).values())
        if (
            len(steps) != 2
            or not isinstance(steps[0], StandardScaler)
            or not isinstance(steps[1], LogisticRegression)
        ):
            raise ArtifactIntegrityError("model is not a StandardScaler + LogisticRegression pipeline")
        scaler, clf = steps
        if clf.coef_.shape != (1, len(FEATURE_COLUMNS)):
            raise ArtifactIntegrityError("model is not a binary classifier over the nine features")
        coef = clf.coef_[0]
        mean = scaler.mean_ if scaler.with_mean else np.zeros_like(coef)
        scale = scaler.scale_ if scaler.with_std else np.ones_like(coef)
        weights = coef / scale
        bias = float(clf.intercept_[0] - np.sum(coef * mean / scale))
        return cls(tuple(float(w) for w in weights), bias, calibration, float(threshold))


def _interp_one(z: float, xs: tuple[float, ...], ys: tuple[float, ...]) -> float:
    """``np.interp`` for one value, without numpy's per-call overhead."""
    if z <= xs[0]:
        return ys[0]
    if z >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, z)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    if x1 == x0:
        return y1
    return y0 + (y1 - y0) * (z - x0) / (x1 - x0)


def parity_rows(n_random: int = 2000, seed: int = 0) -> np.ndarray:
    """Random rows of valid feature values plus the grid's two corners."""
    rng = np.random.default_rng(seed)
    n = len(FEATURE_COLUMNS)
    X = rng.integers(FEATURE_MIN, FEATURE_MAX + 1, size=(n_random, n)).astype(float)
    return np.vstack([X, np.full(n, FEATURE_MIN, float), np.full(n, FEATURE_MAX, float)])


def check_parity(model: LinearModel, artifact: Any, extra_rows: np.ndarray | None = None) -> float:
    """The largest difference between ``model`` and ``artifact.predict_proba`` (the downloadable object).

    Raises:
        ArtifactIntegrityError: they differ by more than 1e-9 (vectorised or one row at a time).
    """
    X = parity_rows() if extra_rows is None else np.vstack([parity_rows(), extra_rows])
    expected = np.asarray(artifact.predict_proba(X))[:, 1]
    fast = model.proba(X)
    single = np.array([model.proba_one(row) for row in X[:300]])
    worst = max(float(np.max(np.abs(fast - expected))), float(np.max(np.abs(single - expected[:300]))))
    if worst > PARITY_TOLERANCE:
        raise ArtifactIntegrityError(f"model.json differs from model.joblib by {worst:.2e} (> 1e-9)")
    return worst
