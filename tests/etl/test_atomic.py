"""etl.atomic: files and folders appear whole under their names or not at all; leftovers; pruning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from etl import atomic


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path: Path):
    dest = tmp_path / "sub" / "meta.json"
    atomic.write_json(dest, {"b": 1, "a": [1, 2]})
    atomic.write_json(dest, {"version": "v2"})
    assert json.loads(dest.read_text()) == {"version": "v2"} == atomic.read_json(dest)
    assert dest.read_text().endswith("\n")
    assert _names(dest.parent) == ["meta.json"]


def test_atomic_path_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path):
    dest = tmp_path / "current.json"
    atomic.write_bytes(dest, b"old")
    with pytest.raises(OSError, match="disk full"), atomic.atomic_path(dest) as tmp:
        tmp.write_bytes(b"half of the new")
        raise OSError("disk full")
    assert dest.read_bytes() == b"old"
    assert _names(tmp_path) == ["current.json"]


def test_atomic_copy_file_copies_every_byte(tmp_path: Path):
    src = tmp_path / "model.joblib"
    src.write_bytes(os.urandom(3 * (1 << 20) + 7))  # more than one chunk
    atomic.copy_file(src, tmp_path / "mirror" / "model.joblib")
    assert (tmp_path / "mirror" / "model.joblib").read_bytes() == src.read_bytes()


def test_atomic_create_file_first_writer_wins_with_mode_0600(tmp_path: Path):
    dest = tmp_path / "secrets" / "key"
    assert atomic.create_file(dest, b"first") is True
    assert atomic.create_file(dest, b"second") is False
    assert dest.read_bytes() == b"first"
    assert dest.stat().st_mode & 0o777 == 0o600
    assert _names(dest.parent) == ["key"]


def test_atomic_publish_folder_moves_a_complete_folder_into_place(tmp_path: Path):
    with atomic.staging_folder(tmp_path, "v1") as staging:
        assert staging.name.startswith(f"{atomic.TMP_PREFIX}v1-")
        (staging / "a.csv").write_bytes(b"a")
        (staging / "b.json").write_bytes(b"{}")
        atomic.publish_folder(staging, tmp_path / "v1")
    assert _names(tmp_path) == ["v1"]
    assert _names(tmp_path / "v1") == ["a.csv", "b.json"]


def test_atomic_staging_folder_is_removed_when_the_block_fails(tmp_path: Path):
    with pytest.raises(RuntimeError, match="crash"), atomic.staging_folder(tmp_path, "v1") as staging:
        (staging / "a.csv").write_bytes(b"partial")
        raise RuntimeError("crash")
    assert _names(tmp_path) == []


def test_atomic_publish_folder_never_replaces_an_existing_folder(tmp_path: Path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "a.csv").write_bytes(b"kept")
    with atomic.staging_folder(tmp_path, "v1") as staging:
        (staging / "a.csv").write_bytes(b"other")
        with pytest.raises(OSError):
            atomic.publish_folder(staging, tmp_path / "v1")
    assert (tmp_path / "v1" / "a.csv").read_bytes() == b"kept"
    assert _names(tmp_path) == ["v1"]


def test_atomic_prune_oldest_keeps_the_newest_and_the_protected(tmp_path: Path):
    paths = []
    for n in range(5):
        folder = tmp_path / f"b{n}"
        folder.mkdir()
        (folder / "f").write_bytes(b"x")
        paths.append(folder)
    removed = atomic.prune_oldest(paths, 2, protected={paths[1]})
    assert removed == [paths[0], paths[2]]
    assert _names(tmp_path) == ["b1", "b3", "b4"]
    assert atomic.prune_oldest(paths[1:2], 0) == []  # 0 keeps all


def test_atomic_remove_leftovers_deletes_only_temporary_names(tmp_path: Path):
    (tmp_path / ".tmp-meta.json.x1").write_text("{")
    (tmp_path / ".tmp-v1-abc").mkdir()
    (tmp_path / ".tmp-v1-abc" / "model.json").write_bytes(b"half")
    (tmp_path / ".tmp-pruned-old").mkdir()
    (tmp_path / "meta.json").write_text("{}")

    pruned_only = atomic.remove_leftovers(tmp_path, f"{atomic.TMP_PREFIX}pruned-")
    rest = atomic.remove_leftovers(tmp_path)

    assert [p.name for p in pruned_only] == [".tmp-pruned-old"]
    assert sorted(p.name for p in rest) == [".tmp-meta.json.x1", ".tmp-v1-abc"]
    assert _names(tmp_path) == ["meta.json"]
