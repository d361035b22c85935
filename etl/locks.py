"""File locks shared by threads and processes (the service's workers, the CLI): ``filelock`` over flock(2).

Each :func:`file_lock` opens the lock file anew, so two holders conflict even inside one process; the kernel
releases a lock when its holder dies, so a killed training never leaves the registry locked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import filelock


class LockBusyError(Exception):
    """A non-blocking :func:`file_lock` found the lock held by someone else."""


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Args:
        path: the lock file; its folder is created if missing.
        blocking: wait for the lock; when false, one attempt.

    Raises:
        LockBusyError: ``blocking`` is false and another holder has the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path, mode=0o644, fallback_to_soft=False)  # never a stale lock file
    try:
        lock.acquire(blocking=blocking)
    except filelock.Timeout:
        raise LockBusyError(str(path)) from None
    try:
        yield
    finally:
        lock.release()
