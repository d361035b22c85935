"""The one way a test waits: poll a condition until a deadline (never sleep for a guessed time).

Deadlines are generous: a slow machine makes a test slower, not red. A condition may raise to stop the wait
early (a server process that exited will never answer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    message: str | Callable[[], str],
    *,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``condition`` until it returns a truthy value, and return that value.

    Args:
        condition: checked at once, then every ``interval`` seconds.
        timeout: seconds before giving up.
        message: what was awaited (or a callable building it, e.g. with a log tail), for the failure.
        ignore: exception types that count as "not yet" (a connection refused while a server starts).

    Raises:
        AssertionError: ``timeout`` passed without a truthy value; says ``message`` and the last result.
    """
    deadline = time.monotonic() + timeout
    while True:
        last: object
        try:
            last = value = condition()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g} s waiting for {text} (last: {last!r})")
        time.sleep(interval)
