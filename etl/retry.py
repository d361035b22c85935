"""Retrying transient failures: one policy (count, backoff, cap, jitter, deadline), run by ``tenacity``.

Used by the download (etl/load.py, etl/fetch.py) and the Google Drive upload (etl/drive/). The n-th retry of
a call waits ``base_seconds * 2**(n-1)``, capped at ``max_delay_seconds``, with "equal jitter": a uniform draw
from the upper half of that delay, so parallel clients spread out yet never retry at once. A call is retried
at most ``retries`` times, and never past the deadline, which is shared by every call made through one
:class:`Retrier` (a download's redirects and attempts, an upload's steps).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``retries`` retries per call; every attempt and wait within ``deadline_seconds`` of the
    :class:`Retrier`'s creation."""

    retries: int = 5
    base_seconds: float = 1.0
    max_delay_seconds: float = 30.0
    deadline_seconds: float = 120.0

    def delay(self, retry: int, draw: float) -> float:
        """The wait before the ``retry``-th retry (1-based), for a uniform ``draw`` in [0, 1]."""
        full = min(self.max_delay_seconds, self.base_seconds * 2 ** (retry - 1))
        return full / 2 + draw * full / 2


class RetriesExhausted(Exception):
    """A call kept failing with transient errors until its retries or the deadline ran out.

    Attributes:
        last: the last transient error.
        attempts: how many attempts the call made.
        out_of_time: the deadline, not the retry count, ended it.
        elapsed: seconds since the Retrier was made.
    """

    def __init__(self, last: BaseException, *, attempts: int, out_of_time: bool, elapsed: float) -> None:
        super().__init__(f"gave up after {attempts} attempt(s): {last!r}")
        self.last = last
        self.attempts = attempts
        self.out_of_time = out_of_time
        self.elapsed = elapsed


class Retrier:
    """Runs calls under one :class:`RetryPolicy` and one deadline, counting every retry taken.

    Args:
        policy: the limits.
        transient: whether an error is worth retrying; any other error is raised at once, unchanged.
        describe: a one-line account of an error for the log (it must not hold secrets).
        sleep, clock, draw: the waiting, the monotonic clock and the jitter's uniform draw (tests).
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        transient: Callable[[BaseException], bool],
        describe: Callable[[BaseException], str] = lambda exc: type(exc).__name__,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.retries = 0
        self._transient = transient
        self._describe = describe
        self._sleep = sleep
        self._clock = clock
        self._draw = draw
        self.started = clock()
        self.deadline = self.started + policy.deadline_seconds

    def elapsed(self) -> float:
        return self._clock() - self.started

    def call(self, name: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried on transient errors; ``name`` says what is tried in the log lines.

        Raises:
            RetriesExhausted: the retries or the time ran out (its ``last`` is the last error).
            Exception: a non-transient error from ``fn``, as raised.
        """
        retrying = tenacity.Retrying(
            sleep=self._sleep,
            retry=tenacity.retry_if_exception(self._transient),
            wait=self._wait,
            stop=self._stop,
            before_sleep=lambda state: self._before_sleep(name, state),
        )
        try:
            return retrying(fn)
        except tenacity.RetryError as exc:
            attempt = exc.last_attempt
            last = attempt.exception()
            assert last is not None  # a RetryError only follows a failed attempt
            raise RetriesExhausted(
                last,
                attempts=attempt.attempt_number,
                out_of_time=attempt.attempt_number <= self.policy.retries,
                elapsed=self.elapsed(),
            ) from last

    def _wait(self, state: tenacity.RetryCallState) -> float:
        return self.policy.delay(state.attempt_number, self._draw())

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        return (
            state.attempt_number > self.policy.retries or self._clock() + state.upcoming_sleep > self.deadline
        )

    def _before_sleep(self, name: str, state: tenacity.RetryCallState) -> None:
        self.retries += 1
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s: transient error (%s); retry %d/%d in %.2fs",
            name,
            self._describe(error) if error else "?",
            state.attempt_number,
            self.policy.retries,
            state.upcoming_sleep,
        )
