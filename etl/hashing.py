"""Digests of bytes and files: sha256 (artifact integrity, content addresses) and md5 (Drive's checksum)."""

from __future__ import annotations

import hashlib
from io import BufferedIOBase
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    with Path(path).open("rb") as fh:
        return sha256_stream(fh)


def sha256_stream(fh: BufferedIOBase) -> str:
    """Hex sha256 of what a binary file object (a local file, an object store's stream) holds, read in
    chunks."""
    return hashlib.file_digest(fh, "sha256").hexdigest()


def md5_file(path: Path) -> str:
    """Hex md5 of a file, read in chunks: what Google Drive reports as ``md5Checksum`` (not for security)."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()
