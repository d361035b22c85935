"""Writing to disk so that a crash never leaves a half-written file or folder under its real name.

A file is written under a temporary name beside its destination (``.tmp-...``), flushed to disk (fsync), and
renamed over the destination; the folder's entry is then flushed too. A folder is built the same way: under
a temporary name, every file and the folder flushed, then renamed into place whole. Anything named
``TMP_PREFIX...`` is a leftover that readers skip and recovery may delete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make the entries of ``path`` (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())


# -- files ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def temp_file(folder: Path, name: str) -> Iterator[Path]:
    """An empty temporary file ``folder/.tmp-<name>.<random>`` (mode 0600), deleted on exit unless it was
    published (renamed or linked away) by then."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{name}.", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def publish_file(tmp: Path, dest: Path) -> None:
    """Flush ``tmp`` and rename it over ``dest`` (same folder), then flush the folder."""
    _fsync_file(tmp)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` to write; on success it replaces ``dest`` durably.

    On any exception the temporary file is removed and ``dest`` is left untouched.
    """
    with temp_file(dest.parent, dest.name) as tmp:
        yield tmp
        publish_file(tmp, dest)


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def json_bytes(obj: Any) -> bytes:
    """The project's JSON layout on disk: indented, sorted keys, a final newline."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_json(dest: Path, obj: Any) -> None:
    write_bytes(dest, json_bytes(obj))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def copy_file(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp, src.open("rb") as fin, tmp.open("wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)


def publish_new_file(tmp: Path, dest: Path) -> bool:
    """Flush ``tmp`` and give it the name ``dest`` (same folder) only if ``dest`` does not exist yet, then
    flush the folder. Returns whether this call made ``dest``; ``tmp`` stays for its owner to delete."""
    _fsync_file(tmp)
    try:
        os.link(tmp, dest)  # unlike a rename, a link never replaces an existing file
    except FileExistsError:
        return False
    fsync_dir(dest.parent)
    return True


def create_file(dest: Path, data: bytes) -> bool:
    """Write ``dest`` (mode 0600) only if it does not exist yet; when several processes race, the first one's
    bytes win whole. Returns whether this call made it."""
    with temp_file(dest.parent, dest.name) as tmp:
        tmp.write_bytes(data)
        return publish_new_file(tmp, dest)


def make_dirs(path: Path) -> None:
    """``mkdir -p path``, flushing the parent of each folder it creates, so that a file published inside
    survives a power cut together with the folders leading to it."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


# -- folders -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def staging_folder(parent: Path, name: str) -> Iterator[Path]:
    """A new empty folder ``parent/.tmp-<name>-<random>`` to fill and then :func:`publish_folder`; on exit,
    whatever is still there (the block raised, or chose not to publish) is deleted."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_folder(staging: Path, final: Path) -> None:
    """Flush every file in ``staging`` and the folder itself, rename it to ``final`` (same parent), then flush
    the parent.

    Raises:
        OSError: ``final`` already exists (and is not an empty folder); ``staging`` is left as it was.
    """
    for path in staging.iterdir():
        if path.is_file():
            _fsync_file(path)
    fsync_dir(staging)
    os.rename(staging, final)
    fsync_dir(final.parent)


def remove_folder(path: Path) -> None:
    """Delete a folder so that it vanishes whole from any listing that skips ``TMP_PREFIX`` names, even if the
    process dies while deleting it: renamed first, then removed."""
    doomed = path.with_name(f"{TMP_PREFIX}pruned-{path.name}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_leftovers(folder: Path, prefix: str = TMP_PREFIX) -> list[Path]:
    """Delete what an interrupted write left in ``folder``: every file or folder named ``prefix...``.

    Returns the paths removed.
    """
    removed = []
    for path in folder.glob(f"{prefix}*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def prune_oldest(paths: Sequence[Path], keep: int, *, protected: Collection[Path] = ()) -> list[Path]:
    """Delete all but the last ``keep`` of ``paths`` (ordered oldest first); ``protected`` ones stay.

    Returns the paths removed.
    """
    if keep <= 0:
        return []
    removed = []
    for path in paths[: max(0, len(paths) - keep)]:
        if path in protected:
            continue
        if path.is_dir():
            remove_folder(path)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
