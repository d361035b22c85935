"""Live quality and input drift of the served version, computed from the prediction record.

Both come from the database, not from the answering process's memory, so every worker reports the same
figures. They are computed at most every ``LIVE_CACHE_SECONDS`` (a scrape of /metrics and
GET /models/current share the result) and never raise: a database that cannot be read gives no figures.

- Live quality: the newest ``LIVE_WINDOW`` predictions of the served version that have an outcome (newest by
  the time they were answered): their confusion counts, and accuracy, recall, precision and specificity once
  at least ``LIVE_MIN_LABELLED`` are in (fewer say little; a ratio without a denominator is left out too).
- Input drift: the PSI of each feature over the newest ``DRIFT_WINDOW`` predictions (whatever version
  answered them: the inputs do not depend on it) against the training rows of the served version (its
  meta.json ``feature_distribution``), once the window holds ``DRIFT_MIN_PREDICTIONS``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from app.records.store import PredictionStore
from etl import monitoring
from etl.errors import DatabaseUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveSettings:
    window: int
    min_labelled: int
    drift_window: int
    drift_min_predictions: int
    cache_seconds: float


@dataclass(frozen=True)
class LiveFigures:
    version: str
    window: int
    labelled: int
    min_labelled: int
    counts: dict[str, int]
    quality: dict[str, float | None]  # None below min_labelled, or without a denominator
    drift_window: int
    drift_predictions: int
    drift_min_predictions: int
    drift: dict[str, float] | None  # None: no reference distribution, or too few predictions

    def to_dict(self) -> dict[str, Any]:
        """The ``live`` and ``drift`` fields of GET /models/current."""
        return {
            "live": {
                "window": self.window,
                "labelled": self.labelled,
                "min_labelled": self.min_labelled,
                "counts": self.counts,
                **self.quality,
            },
            "drift": {
                "window": self.drift_window,
                "predictions": self.drift_predictions,
                "min_predictions": self.drift_min_predictions,
                "psi": self.drift,
            },
        }


class LiveMonitor:
    """``figures(version, reference)``: the served version's live figures, cached for a few seconds."""

    def __init__(self, store: PredictionStore, settings: LiveSettings) -> None:
        self.store = store
        self.settings = settings
        self._lock = threading.Lock()
        self._cached: tuple[float, str, LiveFigures | None] | None = None
        self._warned = False

    def figures(self, version: str, reference: dict[str, Any] | None) -> LiveFigures | None:
        """The figures for ``version`` (``reference``: its training feature distribution), or None when the
        database cannot be read."""
        with self._lock:
            cached = self._cached
            if cached and cached[1] == version and time.monotonic() - cached[0] < self.settings.cache_seconds:
                return cached[2]
            try:
                figures: LiveFigures | None = self._compute(version, reference)
            except DatabaseUnavailableError as exc:
                if not self._warned:
                    log.warning("live figures unavailable: %s", exc)
                    self._warned = True
                figures = None
            else:
                self._warned = False
            self._cached = (time.monotonic(), version, figures)
            return figures

    def _compute(self, version: str, reference: dict[str, Any] | None) -> LiveFigures:
        s = self.settings
        predicted, actual = self.store.labelled_window(version, s.window)
        counts = monitoring.confusion(predicted, actual)
        labelled = len(actual)
        quality = monitoring.quality(counts)
        if labelled < s.min_labelled:
            quality = dict.fromkeys(quality)
        recent = self.store.recent_features(s.drift_window)
        drift = None
        if reference and len(recent) >= s.drift_min_predictions:
            drift = monitoring.drift(reference, recent)
        return LiveFigures(
            version=version,
            window=s.window,
            labelled=labelled,
            min_labelled=s.min_labelled,
            counts=counts,
            quality=quality,
            drift_window=s.drift_window,
            drift_predictions=len(recent),
            drift_min_predictions=s.drift_min_predictions,
            drift=drift,
        )
