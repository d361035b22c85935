"""etl.hashing: the digests are hashlib's over every byte of the file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from etl.hashing import md5_file, sha256_bytes, sha256_file


def test_hashing_digests_match_hashlib_over_the_whole_file(tmp_path: Path):
    path = tmp_path / "blob"
    data = os.urandom(2 * (1 << 20) + 11)  # several read chunks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest() == sha256_bytes(data)
    assert md5_file(path) == hashlib.md5(data).hexdigest()
