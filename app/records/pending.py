"""Answered predictions on their way to the database: one ``OnePending`` per /predict and one
``ManyPending`` per /predict/batch (the batch's arrays as they are, not one object per row), turned into
rows only by the writer, off the hot path."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np

# the columns of a row, in order (app/records/tables.py: predictions)
Row = tuple[Any, ...]


# A /predict answer on its way: a plain tuple (the cheapest object to make on the hot path):
# (id, created: Unix time in microseconds, version, threshold, probability, class, the nine scores)
OnePending = tuple[str, int, str, float, float, int, Sequence[int]]


def one_rows(item: OnePending, when: Callable[[int], Any]) -> Iterable[Row]:
    pid, created, version, threshold, probability, predicted, features = item
    return ((pid, when(created), version, threshold, probability, predicted, *features),)


class ManyPending(NamedTuple):
    ids: list[str]  # the ids the answer carries, in row order
    created: int
    version: str
    threshold: float
    probabilities: np.ndarray  # (n,)
    malignant: np.ndarray  # (n,) bool
    features: np.ndarray  # (n, 9) scores as floats

    @property
    def size(self) -> int:
        return len(self.probabilities)

    def rows(self, when: Callable[[int], Any]) -> Iterable[Row]:
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


def size(item: Pending) -> int:
    """How many predictions ``item`` holds."""
    return item.size if isinstance(item, ManyPending) else 1


def rows(item: Pending, when: Callable[[int], Any]) -> Iterable[Row]:
    """``item``'s rows in the columns' order, ``when`` turning a time into the database's value."""
    return item.rows(when) if isinstance(item, ManyPending) else one_rows(item, when)
