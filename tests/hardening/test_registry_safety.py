"""The registry without servers: what recover() may delete; nothing unpickled, nothing unsigned served."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from etl.errors import ArtifactIntegrityError
from etl.registry import Registry
from tests.hardening.conftest import malicious_pickle
from tests.pipeline_support import fitted_version_files
from tests.registry_support import registry_db_url, set_row, version_dir

KEY = b"k" * 32


@pytest.mark.parametrize("training_running", [False, True])
def test_recover_removes_unpublished_files_only_of_dead_trainings(
    tmp_path: Path, training_running: bool
) -> None:
    """A restart while another process (the CLI, another worker, another host) is training must not delete
    the files it is uploading; those a killed training left (its lease died with it) are removed."""
    registry = Registry(tmp_path / "results")
    unpublished = "20260101T000000Z-0123abcd"
    registry.store.put_new(f"{unpublished}/model.joblib", b"half")
    other = Registry(tmp_path / "results")  # another process's view of the same registry
    if training_running:
        with other.training_lock():
            removed = registry.recover()
    else:
        removed = registry.recover()
    assert registry.store.exists(f"{unpublished}/model.joblib") is training_running, removed
    assert (unpublished in removed) is not training_running, removed


def test_registry_never_unpickles_even_a_hash_fixed_up_model_joblib(tmp_path: Path) -> None:
    """model.joblib is for people to download: no registry operation loads it, so a malicious pickle with
    its sha256 recomputed in the database runs nothing (promotion, verification, recovery, model loading)."""
    files, _ = fitted_version_files(tmp_path)
    registry = Registry(tmp_path / "results", KEY)
    version = "20260101T000000Z-0123abcd"
    registry.create_version(version, files, {"threshold": 0.5})
    marker = tmp_path / "marker"
    evil = malicious_pickle(marker)
    (version_dir(registry.root, version) / "model.joblib").write_bytes(evil)
    meta = registry.read_meta(version)
    url = registry_db_url(registry.root)
    set_row(url, version, files={**meta["files"], "model.joblib": hashlib.sha256(evil).hexdigest()})
    registry.write_metrics(version, {"quality_gate": {"passed": True, "reasons": []}})

    registry.verify(version)
    registry.promote(version)
    registry.load_model(version)
    (registry.root / "model.joblib").unlink()
    registry.recover()  # re-syncs the mirror by copying bytes, never loading them

    assert not marker.exists()
    assert (registry.root / "model.joblib").read_bytes() == evil  # the download is what it is; never run


def test_load_model_uses_only_the_bytes_it_verified(tmp_path: Path) -> None:
    """model.json swapped between the signature check and the parse (a race with an attacker or a broken
    copy) must not be served: each load either gets the trained model or an integrity error."""
    files, _ = fitted_version_files(tmp_path)
    registry = Registry(tmp_path / "results", KEY)
    version = "20260101T000000Z-0123abcd"
    registry.create_version(version, files, {"threshold": 0.5})
    vdir = version_dir(registry.root, version)
    model = vdir / "model.json"
    good = model.read_bytes()
    trained = registry.load_model(version)
    doc = json.loads(good)
    doc["bias"] = -1e6  # "benign" for everyone
    evil = json.dumps(doc).encode()
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            for data in (evil, good):
                tmp = vdir / ".swap"
                tmp.write_bytes(data)
                os.replace(tmp, model)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    loads = refused = 0
    served_tampered = False
    deadline = time.monotonic() + 3.0
    try:
        while time.monotonic() < deadline:
            try:
                loaded = registry.load_model(version)
            except ArtifactIntegrityError:
                refused += 1
                continue
            loads += 1
            served_tampered = served_tampered or loaded != trained
    finally:
        stop.set()
        swapper.join(5)
    print(f"\nload race: {loads} loads of the signed model, {refused} refused")
    assert not served_tampered, (
        f"loaded a model.json that fails its signature ({loads} loads, {refused} refused)"
    )
    assert loads + refused > 0
