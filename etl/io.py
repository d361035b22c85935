"""Small filesystem helpers: atomic writes (temp file + fsync + rename) and hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success fsync it and rename it over ``dest``.

    On any exception the temporary file is removed and ``dest`` is left untouched.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + dest.name + ".", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(dest: Path, obj: Any) -> None:
    write_bytes_atomic(dest, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def copy_atomic(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp, src.open("rb") as fin, tmp.open("wb") as fout:
        while block := fin.read(1 << 20):
            fout.write(block)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def prune_oldest(paths: Sequence[Path], keep: int, *, protected: Collection[Path] = ()) -> list[Path]:
    """Delete all but the last ``keep`` of ``paths`` (ordered oldest first); ``protected`` ones stay.

    A folder is first renamed to a temporary name, so it vanishes whole from any listing that skips
    ``TMP_PREFIX`` names even if the process dies while deleting it. Returns the paths removed.
    """
    if keep <= 0:
        return []
    removed = []
    for path in paths[: max(0, len(paths) - keep)]:
        if path in protected:
            continue
        if path.is_dir():
            doomed = path.with_name(f"{TMP_PREFIX}pruned-{path.name}")
            os.rename(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
