"""Leases: one holder at a time across every process and host that shares the registry's database.

A lease is a row (etl/registry_db/tables.py ``registry_leases``) holding a random token, a generation that
rises by one per acquisition, who holds it and when it expires. The holder renews it from a heartbeat thread
every third of its duration, so a lease outlives its holder by at most ``seconds`` after a crash, a `kill -9`
or a lost network. It is taken over sooner when its holder is a process this one can see is dead: same
kernel boot and PID namespace, and no process with that pid and start time (a restarted service takes its
own dead predecessor's lease at once; a holder on another host is waited out).

The token fences: every write made under a lease (registering a version, promoting one) checks, inside its own
transaction, that the row still holds this token. A holder that stalled past its expiry (a long pause, a
partition) and was taken over finds its writes refused (LeaseLostError), even if it has not noticed yet.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from etl.errors import DatabaseUnavailableError
from etl.registry_db.store import LeaseBusy

if TYPE_CHECKING:
    from etl.registry_db.store import RegistryDB

log = logging.getLogger(__name__)

# how often, in fractions of the lease, a waiting acquirer tries again
_WAIT_STEP = 0.2


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _machine() -> str:
    """Who can see this process's pids: the kernel boot and the PID namespace ("" when unknown)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{boot}/{namespace}" if boot and namespace else ""


def _start_time(pid: int) -> str:
    """The process's start time after boot, in clock ticks (/proc/<pid>/stat field 22); "" when gone."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: enough to name it in a message, and to tell whether it is a dead local process."""

    host: str
    pid: int
    machine: str
    started: str

    @classmethod
    def this_process(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), _machine(), _start_time(os.getpid()))

    def encode(self) -> str:
        return json.dumps(
            {"host": self.host[:100], "pid": self.pid, "machine": self.machine, "started": self.started}
        )

    @classmethod
    def decode(cls, text: str | None) -> Holder | None:
        try:
            data = json.loads(text or "")
            return cls(str(data["host"]), int(data["pid"]), str(data["machine"]), str(data["started"]))
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}"

    def is_dead(self) -> bool:
        """True only when certain: the holder shares this process's pids and its process is gone."""
        if not self.machine or self.machine != _machine():
            return False
        return _start_time(self.pid) != self.started


def describe(holder: str | None) -> str:
    decoded = Holder.decode(holder)
    return decoded.describe() if decoded else "another process"


def holder_is_dead(holder: str) -> bool:
    decoded = Holder.decode(holder)
    return decoded is not None and decoded.is_dead()


class Lease:
    """A lease this process holds: renewed by a heartbeat until ``release`` (or the ``with`` block ends).

    ``token`` is what fences writes; ``lost`` is set when a renewal finds the lease taken over.
    """

    def __init__(self, db: RegistryDB, name: str, token: str, generation: int, seconds: float) -> None:
        self.db = db
        self.name = name
        self.token = token
        self.generation = generation
        self.seconds = seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{name}", daemon=True)
        self._thread.start()

    @property
    def fence(self) -> tuple[str, str]:
        """What a write under this lease checks: the lease's name and this holder's token."""
        return self.name, self.token

    @classmethod
    def acquire(cls, db: RegistryDB, name: str, seconds: float, *, wait: float = 0.0) -> Lease:
        """Take the lease ``name`` for ``seconds`` (renewed until released), waiting up to ``wait`` seconds
        for its holder to let go.

        Raises:
            LeaseBusy: it is still held after ``wait`` (``holder`` says by whom).
            DatabaseUnavailableError: the registry's database cannot be reached.
        """
        holder = Holder.this_process().encode()
        deadline = time.monotonic() + wait
        while True:
            token = secrets.token_hex(16)
            try:
                generation = db.acquire(name, token, holder, seconds, holder_is_dead)
            except LeaseBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(_WAIT_STEP, max(deadline - time.monotonic(), 0.0)) or _WAIT_STEP)
                continue
            log.debug("lease %s: acquired (generation %d, %.0f s)", name, generation, seconds)
            return cls(db, name, token, generation, seconds)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.db.renew(self.name, self.token, self.seconds):
                    self.lost.set()
                    log.error(
                        "lease %s (generation %d) was taken over by another process: what this one was "
                        "doing will not be published",
                        self.name,
                        self.generation,
                    )
                    return
            except DatabaseUnavailableError as exc:  # try again at the next beat; expiry is the limit
                log.warning("lease %s: could not renew: %s", self.name, exc)
            except Exception:  # the heartbeat must not die silently
                log.exception("lease %s: renewal failed", self.name)

    def release(self) -> None:
        """Stop renewing and free the lease (if it is still this holder's)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            self.db.release(self.name, self.token)
        except DatabaseUnavailableError as exc:  # it expires by itself
            log.warning(
                "lease %s: could not release (it expires within %.0f s): %s", self.name, self.seconds, exc
            )

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
