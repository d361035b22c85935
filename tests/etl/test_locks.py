"""etl.locks: exclusive file locks between threads and processes; a dead holder's lock is free."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from etl.locks import LockBusyError, file_lock
from tests.conftest import ROOT
from tests.waiting import wait_until


def test_file_lock_second_holder_in_the_same_process_is_refused_at_once(tmp_path: Path):
    lock = tmp_path / "x.lock"
    with file_lock(lock), pytest.raises(LockBusyError), file_lock(lock, blocking=False):
        pass
    with file_lock(lock, blocking=False):  # released: free again
        pass


def test_file_lock_blocking_waiter_gets_it_when_released(tmp_path: Path):
    lock = tmp_path / "x.lock"
    acquired = threading.Event()

    def waiter() -> None:
        with file_lock(lock):
            acquired.set()

    thread = threading.Thread(target=waiter, daemon=True)
    with file_lock(lock):
        thread.start()
        assert not acquired.wait(0.3)  # held here: the waiter cannot have it
    assert acquired.wait(30)
    thread.join(30)


def test_file_lock_nested_blocking_acquire_in_one_thread_fails_instead_of_hanging(tmp_path: Path):
    lock = tmp_path / "x.lock"
    with file_lock(lock), pytest.raises(RuntimeError, match="Deadlock"), file_lock(lock):
        pass


def test_file_lock_of_a_killed_holder_is_free(tmp_path: Path):
    lock, held = tmp_path / "x.lock", tmp_path / "held"
    code = (
        "import sys, time; from pathlib import Path; from etl.locks import file_lock\n"
        "with file_lock(Path(sys.argv[1])):\n"
        "    Path(sys.argv[2]).touch()\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock), str(held)], cwd=ROOT)
    try:
        wait_until(held.exists, 60, "the child to hold the lock")
        with pytest.raises(LockBusyError), file_lock(lock, blocking=False):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    with file_lock(lock, blocking=False):
        pass
