"""Threads that switch as often as CPython lets them: for the prediction record's lock-free hot path
(app/records/ids.py, app/records/writer.py), whose steps must hold under any interleaving."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable


def race(work: Callable[[], None], threads: int) -> None:
    """Run ``work`` in ``threads`` threads at once with a 1 µs switch interval (5 ms by default), and wait
    for all of them."""
    started = [threading.Thread(target=work) for _ in range(threads)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in started:
            thread.start()
        for thread in started:
            thread.join()
    finally:
        sys.setswitchinterval(old)
