"""Prediction ids: cheap to make on the hot path, unique across workers, hosts and restarts.

An id is ``<prefix>-<counter>``: 16 random hex digits drawn once per process (64 bits: two processes share a
prefix with odds of about one in 10^11 after a million starts) and a counter of 10 hex digits that the
process increments for every prediction it answers (a batch takes a block; past 10^12 it simply grows a
digit). Making one costs a lock and a
string format, never a database round trip. The prefix also says which process made an id, so a lookup can
ask that process's writer how far it has written (app/records/writer.py).
"""

from __future__ import annotations

import re
import secrets
import threading

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
        self._next = 0
        self._lock = threading.Lock()

    def next_id(self) -> str:
        """One fresh id (/predict's: one call, where ``take`` and ``format_id`` are two)."""
        with self._lock:
            counter = self._next
            self._next = counter + 1
        return f"{self.prefix}-{counter:010x}"

    def take(self, count: int = 1) -> int:
        """The first of ``count`` fresh counters: the ids are ``format_id(self.prefix, first + i)``."""
        with self._lock:
            first = self._next
            self._next = first + count
            return first

    @staticmethod
    def ids(prefix: str, first: int, count: int) -> list[str]:
        head = prefix + "-"
        return [f"{head}{n:010x}" for n in range(first, first + count)]
