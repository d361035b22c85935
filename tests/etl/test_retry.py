"""etl.retry: backoff with equal jitter, a retry count per call, one deadline across calls, the log line."""

from __future__ import annotations

import logging

import pytest

from etl.retry import Retrier, RetriesExhausted, RetryPolicy
from tests.etl.conftest import FakeClock


def _retrier(policy: RetryPolicy, clock: FakeClock, draw: float = 1.0) -> Retrier:
    return Retrier(
        policy,
        transient=lambda exc: isinstance(exc, ConnectionError),
        sleep=clock.sleep,
        clock=clock,
        draw=lambda: draw,
    )


def _failing(exc: BaseException, calls: list[int]):
    def fn() -> None:
        calls.append(1)
        raise exc

    return fn


@pytest.mark.parametrize(("draw", "expected"), [(0.0, [0.5, 1.0, 2.0, 2.5]), (1.0, [1.0, 2.0, 4.0, 5.0])])
def test_retry_policy_delay_is_exponential_with_equal_jitter_and_capped(draw: float, expected: list[float]):
    policy = RetryPolicy(base_seconds=1.0, max_delay_seconds=5.0)
    assert [policy.delay(n, draw) for n in (1, 2, 3, 4)] == expected


def test_retrier_gives_up_after_the_retry_count(fake_clock: FakeClock):
    calls: list[int] = []
    retrier = _retrier(RetryPolicy(retries=2, base_seconds=1.0, deadline_seconds=100), fake_clock)
    error = ConnectionResetError("reset")

    with pytest.raises(RetriesExhausted) as info:
        retrier.call("step", _failing(error, calls))

    assert len(calls) == 3 and fake_clock.sleeps == [1.0, 2.0] and retrier.retries == 2
    assert info.value.last is error and info.value.attempts == 3 and not info.value.out_of_time
    assert info.value.elapsed == 3.0


def test_retrier_deadline_is_shared_by_every_call(fake_clock: FakeClock):
    retrier = _retrier(RetryPolicy(retries=10, base_seconds=2.0, deadline_seconds=5.0), fake_clock)
    outcomes: list[object] = [ConnectionResetError(), "first"]

    def flaky() -> object:
        item = outcomes.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    assert retrier.call("first", flaky) == "first"  # waited 2 s of the 5
    fake_clock.now += 2.5
    with pytest.raises(RetriesExhausted) as info:  # a 2 s wait would end past the deadline
        retrier.call("second", _failing(ConnectionRefusedError(), []))
    assert info.value.out_of_time and info.value.attempts == 1
    assert fake_clock.sleeps == [2.0] and retrier.retries == 1


def test_retrier_raises_a_permanent_error_unchanged_without_waiting(fake_clock: FakeClock):
    calls: list[int] = []
    retrier = _retrier(RetryPolicy(), fake_clock)
    with pytest.raises(ValueError, match="bug"):
        retrier.call("step", _failing(ValueError("bug"), calls))
    assert calls == [1] and fake_clock.sleeps == [] and retrier.retries == 0


def test_retrier_logs_each_retry_with_its_number_and_wait(
    fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="etl.retry")
    retrier = Retrier(
        RetryPolicy(retries=2, base_seconds=0.5),
        transient=lambda exc: True,
        describe=lambda exc: f"HTTP {exc}",
        sleep=fake_clock.sleep,
        clock=fake_clock,
        draw=lambda: 1.0,
    )
    with pytest.raises(RetriesExhausted):
        retrier.call("download of https://data.example/d.csv", _failing(RuntimeError("503"), []))
    assert [r.getMessage() for r in caplog.records] == [
        "download of https://data.example/d.csv: transient error (HTTP 503); retry 1/2 in 0.50s",
        "download of https://data.example/d.csv: transient error (HTTP 503); retry 2/2 in 1.00s",
    ]
