"""Answered predictions on their way to the database: one ``OnePending`` per /predict and one
``ManyPending`` per /predict/batch (the batch's arrays as they are, not one object per row), turned into
rows only by the writer, off the hot path."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np

from app.records.ids import format_id

# the columns of a row, in order (app/records/tables.py: predictions)
Row = tuple[Any, ...]


class OnePending(NamedTuple):
    prefix: str
    counter: int
    created: float  # Unix time the answer was made
    version: str
    threshold: float
    probability: float
    predicted_class: int
    features: Sequence[int]  # the nine scores, model column order

    @property
    def size(self) -> int:
        return 1

    def rows(self, when: Callable[[float], Any]) -> Iterable[Row]:
        return (
            (
                format_id(self.prefix, self.counter),
                when(self.created),
                self.version,
                self.threshold,
                self.probability,
                self.predicted_class,
                *self.features,
            ),
        )


class ManyPending(NamedTuple):
    ids: list[str]  # the ids the answer carries, in row order
    created: float
    version: str
    threshold: float
    probabilities: np.ndarray  # (n,)
    malignant: np.ndarray  # (n,) bool
    features: np.ndarray  # (n, 9) scores as floats

    @property
    def size(self) -> int:
        return len(self.probabilities)

    def rows(self, when: Callable[[float], Any]) -> Iterable[Row]:
        n = self.size
        return zip(
            self.ids,
            repeat(when(self.created), n),
            repeat(self.version, n),
            repeat(self.threshold, n),
            self.probabilities.tolist(),
            self.malignant.astype(np.int8).tolist(),
            *self.features.astype(np.int16).T.tolist(),
            strict=True,
        )


Pending = OnePending | ManyPending
