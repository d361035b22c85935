"""Prediction ids: cheap to make on the hot path, unique across workers, hosts and restarts.

An id is ``<prefix>-<counter>``: 16 random hex digits drawn once per process (64 bits: two processes share a
prefix with odds of about one in 10^11 after a million starts) and a counter of 10 hex digits that the
process increments for every prediction it answers (a batch takes a block; past 10^12 it simply grows a
digit). Making one costs a string format, never a lock or a database round trip: the counter is an
``itertools.count``, whose steps CPython's GIL makes atomic (``next`` on it, and a block taken through
``islice``, run in C without letting another thread in). The prefix also says which process made an id, so
a lookup can ask that process's writer how far it has written (app/records/writer.py).
"""

from __future__ import annotations

import re
import secrets
from collections import deque
from itertools import count, islice

PREFIX_HEX = 16
COUNTER_HEX = 10
PATTERN = rf"^[0-9a-f]{{{PREFIX_HEX}}}-[0-9a-f]{{{COUNTER_HEX},16}}$"
MIN_LENGTH, MAX_LENGTH = PREFIX_HEX + 1 + COUNTER_HEX, PREFIX_HEX + 1 + 16
_ID = re.compile(PATTERN)


def is_prediction_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def prefix_of(prediction_id: str) -> str:
    return prediction_id[:PREFIX_HEX]


def format_id(prefix: str, counter: int) -> str:
    return f"{prefix}-{counter:010x}"


class IdMint:
    """Hands out the ids of one process: ``take(n)`` reserves ``n`` consecutive counters (thread-safe)."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or secrets.token_hex(PREFIX_HEX // 2)
        self._head = self.prefix + "-"
        self._counter = count()

    def next_id(self) -> str:
        """One fresh id (/predict's: one call, where ``take`` and ``format_id`` are two)."""
        return f"{self._head}{next(self._counter):010x}"

    def take(self, n: int = 1) -> int:
        """The first of ``n`` fresh consecutive counters: the ids are ``format_id(self.prefix, first + i)``
        (``n`` = 0 takes none and returns 0)."""
        if n <= 1:
            return next(self._counter) if n == 1 else 0
        return deque(islice(self._counter, n), maxlen=1)[0] - n + 1  # one C loop: no thread gets between

    @staticmethod
    def ids(prefix: str, first: int, count: int) -> list[str]:
        head = prefix + "-"
        return [f"{head}{n:010x}" for n in range(first, first + count)]
