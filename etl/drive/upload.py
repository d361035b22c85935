"""Upload files into a timestamped Google Drive folder, idempotently, each Drive call a named step.

What it guarantees:

- media goes up through resumable sessions; after a dropped connection the session is asked how far it got
  and continues from there, so nothing is uploaded twice;
- the size and ``md5Checksum`` Drive reports for each file must equal the local file's;
- transient failures (etl/drive/errors.py) are retried with exponential backoff and jitter (etl/retry.py),
  bounded per step in count and overall in time; then ``StorageError`` names the step that failed;
- it is idempotent: the caller persists the progress reported through ``on_progress`` (folder name before
  the folder is created, its id right after, each file id after its upload) and hands it back as
  ``previous``; a re-run reuses that folder (or finds it by name when its id was never recorded) and skips
  every file already there whole (same name, size and md5);
- configuration problems (key file, folder access, storage quota) raise ``DriveConfigError`` with the fix.

Key material and tokens never reach a log line or an error message: messages name the key *file* and the
account's ``client_email`` only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from google.auth import exceptions as auth_exceptions
from googleapiclient.errors import HttpError

from etl.drive import client
from etl.drive.client import DriveFile
from etl.drive.config import DriveConfig
from etl.drive.credentials import load_credentials
from etl.drive.errors import Target, auth_error, config_error, describe, gave_up, is_transient
from etl.errors import StorageError
from etl.hashing import md5_file
from etl.retry import Retrier, RetriesExhausted, RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class DriveResult:
    """What was uploaded where. ``skipped`` lists files that were already in the folder whole."""

    folder_id: str
    folder_name: str
    files: list[DriveFile]
    retries: int
    duration_seconds: float
    reused_folder: bool = False
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder_id": self.folder_id,
            "folder_name": self.folder_name,
            "files": [f.to_dict() for f in self.files],
            "retries": self.retries,
            "duration_seconds": self.duration_seconds,
            "reused_folder": self.reused_folder,
            "skipped": list(self.skipped),
        }


class Steps:
    """Runs each Drive call as a named step: transient errors are retried under one :class:`Retrier` (its
    deadline covers the whole upload), and the error that ends a step becomes the ``StorageError`` or
    ``DriveConfigError`` that names it."""

    def __init__(self, retrier: Retrier, target: Target) -> None:
        self.retrier = retrier
        self.target = target

    @property
    def retries(self) -> int:
        return self.retrier.retries

    def run(self, step: str, fn: Callable[[], T]) -> T:
        try:
            return self.retrier.call(f"drive {step}", fn)
        except RetriesExhausted as exc:
            policy = self.retrier.policy
            limits = f"{policy.retries} retries per step, {policy.deadline_seconds:g}s in all"
            raise gave_up(step, exc.last, exc.elapsed, self.retries, limits) from exc.last
        except HttpError as exc:
            raise config_error(exc, step, self.target, self.retries) from None
        except auth_exceptions.RefreshError as exc:
            raise auth_error(exc, self.target, self.retries) from None


def drive_retrier(policy: RetryPolicy, **clock: Any) -> Retrier:
    """The retrier of one upload, on Drive's transient errors (``clock``: ``sleep``, ``clock``, ``draw``)."""
    return Retrier(policy, transient=is_transient, describe=describe, **clock)


class _Progress:
    """The Drive state of an upload, handed to ``on_progress`` as it changes."""

    def __init__(
        self,
        parent_folder_id: str,
        previous: dict[str, Any] | None,
        on_progress: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        state: dict[str, Any] = {}
        if previous and previous.get("parent_folder_id") == parent_folder_id:
            state = {k: previous.get(k) for k in ("folder_name", "folder_id")}
            state["files"] = dict(previous.get("files") or {})
        state.update(parent_folder_id=parent_folder_id, status="in_progress")
        state.setdefault("files", {})
        self.state = state
        self._on_progress = on_progress

    def report(self, **changes: Any) -> None:
        self.state.update(changes)
        if self._on_progress is not None:
            self._on_progress(json.loads(json.dumps(self.state)))

    def file_done(self, f: DriveFile) -> None:
        self.state["files"][f.name] = {"id": f.id, "size": f.size, "md5": f.md5}
        self.report()


def upload_to_drive(
    files: Sequence[Path],
    folder_name: str,
    config: DriveConfig,
    *,
    previous: dict[str, Any] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    retrier: Retrier | None = None,
) -> DriveResult:
    """Upload ``files`` into the subfolder ``folder_name`` of the Drive folder ``config.parent_folder_id``.

    Args:
        files: local files; each keeps its name in Drive.
        folder_name: the subfolder to create (ignored when ``previous`` names a folder already made).
        config: where and how (etl/drive/config.py).
        previous: the progress recorded by an earlier attempt for the same files (see ``on_progress``).
        on_progress: called with the progress dict (``parent_folder_id``, ``folder_name``, ``folder_id``,
            ``files``: {name: {id, size, md5}}, ``status``) before the folder is created, after it is,
            and after each file; persist it and pass it back as ``previous``.
        retrier: the retries' clock and sleep (tests); by default :func:`drive_retrier` of ``config``.

    Returns:
        DriveResult with the folder, the files (uploaded or found whole), retries and duration.

    Raises:
        DriveConfigError: bad key file, folder missing or not writable, storage quota, rejected credentials.
        StorageError: a step kept failing with transient errors past the retry bounds, or a verification
            mismatch; ``step`` names it.
    """
    started = time.monotonic()
    creds = load_credentials(config.credentials_path, config.scopes, config.impersonate, config.token_uri)
    target = Target(config.parent_folder_id, creds)
    steps = Steps(retrier or drive_retrier(config.retry), target)
    progress = _Progress(config.parent_folder_id, previous, on_progress)
    with client.session(config, creds.credentials) as session:
        service = session.service
        steps.run("authenticate", lambda: session.authenticate(creds.credentials))
        steps.run("check folder", lambda: client.check_parent(service, target))
        folder_id, reused = _folder(service, steps, progress, folder_name)
        existing = steps.run("list folder", lambda: client.list_files(service, folder_id))
        results: list[DriveFile] = []
        skipped: list[str] = []
        for path in map(Path, files):
            drive_file, was_there = _put(service, steps, folder_id, path, existing, config.chunk_size)
            results.append(drive_file)
            if was_there:
                skipped.append(path.name)
            progress.file_done(drive_file)
    progress.report(status="uploaded")
    duration = round(time.monotonic() - started, 3)
    log.info(
        "drive upload done: folder %s (%s), %d file(s) [%s], %d skipped, %d retries, %.2fs",
        progress.state["folder_name"],
        folder_id,
        len(results),
        ", ".join(f"{f.name}={f.id} ({f.size} B)" for f in results),
        len(skipped),
        steps.retries,
        duration,
    )
    return DriveResult(
        folder_id=folder_id,
        folder_name=progress.state["folder_name"],
        files=results,
        retries=steps.retries,
        duration_seconds=duration,
        reused_folder=reused,
        skipped=skipped,
    )


def _folder(service: Any, steps: Steps, progress: _Progress, folder_name: str) -> tuple[str, bool]:
    """(id, reused): the recorded folder if it still exists, else one found or made by name, whose name is on
    record before it exists (so a crash cannot orphan it)."""
    parent = steps.target.parent_folder_id
    recorded = progress.state.get("folder_id")
    if recorded:
        folder_id = steps.run("find folder", lambda: client.existing_folder(service, recorded, parent))
        if folder_id is not None:
            _log_folder(progress, folder_id, parent, reused=True)
            return folder_id, True
    name = progress.state.get("folder_name") or folder_name
    progress.report(folder_name=name, folder_id=None, files={})
    folder_id, found = steps.run("create folder", lambda: client.find_or_create_folder(service, name, parent))
    progress.report(folder_id=folder_id)
    _log_folder(progress, folder_id, parent, reused=found)
    return folder_id, found


def _log_folder(progress: _Progress, folder_id: str, parent: str, *, reused: bool) -> None:
    log.info(
        "drive folder %s (%s) in %s %s",
        progress.state["folder_name"],
        folder_id,
        parent,
        "reused" if reused else "created",
    )


def _put(
    service: Any,
    steps: Steps,
    folder_id: str,
    path: Path,
    existing: dict[str, list[DriveFile]],
    chunk_size: int,
) -> tuple[DriveFile, bool]:
    """(the file in Drive, whether it was there whole already): uploaded and verified unless it was."""
    size, md5 = path.stat().st_size, md5_file(path)
    same = [f for f in existing.get(path.name, []) if f.size == size and f.md5 == md5]
    if same:
        log.info(
            "drive %s already in folder %s whole (id %s); not uploaded again",
            path.name,
            folder_id,
            same[0].id,
        )
        return same[0], True
    if existing.get(path.name):
        log.warning(
            "drive folder %s holds a %s with other content; uploading this one beside it",
            folder_id,
            path.name,
        )
    step = f"upload {path.name}"
    t0 = time.monotonic()
    drive_file = client.upload_file(service, folder_id, path, chunk_size, lambda fn: steps.run(step, fn))
    if drive_file.size != size or drive_file.md5 != md5:
        raise StorageError(
            f"Google Drive reports size {drive_file.size} and md5 {drive_file.md5} for {path.name} (file "
            f"{drive_file.id}); the local file has size {size} and md5 {md5}",
            step=f"verify {path.name}",
            retries=steps.retries,
        )
    log.info(
        "drive uploaded %s: id %s, %d bytes, md5 %s verified, %.2fs",
        path.name,
        drive_file.id,
        size,
        md5,
        time.monotonic() - t0,
    )
    return drive_file, False
