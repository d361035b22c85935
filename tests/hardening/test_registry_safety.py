"""The registry without servers: what recover() may delete, and what load_pipeline() may unpickle."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline

from etl.errors import ArtifactIntegrityError
from etl.registry import Registry
from tests.hardening.conftest import malicious_pickle


@pytest.mark.parametrize("training_running", [False, True])
def test_recover_removes_staging_only_of_dead_trainings(tmp_path: Path, training_running: bool) -> None:
    """A restart while another process (the CLI, another worker) is training must not delete its staging
    folder; one left by a killed training (its lock died with it) is removed."""
    registry = Registry(tmp_path / "results")
    staging = registry.models_dir / ".tmp-20260101T000000Z-0123abcd"
    staging.mkdir(parents=True)
    (staging / "model.joblib").write_bytes(b"half")
    other = Registry(tmp_path / "results")  # another process's view: flock conflicts across open files
    if training_running:
        with other.training_lock():
            removed = registry.recover()
    else:
        removed = registry.recover()
    assert staging.exists() is training_running, removed
    assert (str(staging) in removed) is not training_running, removed


def test_load_pipeline_unpickles_only_the_bytes_it_verified(tmp_path: Path) -> None:
    """A file swapped between the sha256 check and the unpickling (a race with an attacker or a broken
    copy) must not be unpickled: each load either gets the trained pipeline or an integrity error."""
    registry = Registry(tmp_path / "results")
    frame = pd.DataFrame({"x": [0, 1, 0, 1], "Class": [0, 1, 0, 1]})
    pipe = Pipeline([("clf", DummyClassifier().fit(frame[["x"]], frame["Class"]))])
    version = "20260101T000000Z-0123abcd"
    vdir = registry.create_version(version, pipe, {"threshold": 0.5}, frame)
    model = vdir / "model.joblib"
    good = model.read_bytes()
    marker = tmp_path / "marker"
    evil = tmp_path / "evil"
    evil.write_bytes(malicious_pickle(marker))
    good_copy = tmp_path / "good"
    good_copy.write_bytes(good)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            for src in (evil, good_copy):
                tmp = vdir / ".swap"
                tmp.write_bytes(src.read_bytes())
                os.replace(tmp, model)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    loads = refused = 0
    deadline = time.monotonic() + 3.0
    try:
        while time.monotonic() < deadline and not marker.exists():
            try:
                loaded, _ = registry.load_pipeline(version)
                assert isinstance(loaded, Pipeline)
                loads += 1
            except ArtifactIntegrityError:
                refused += 1
            except Exception:  # the tampered bytes were unpickled (marker written) or half-read
                if marker.exists():
                    break
                raise
    finally:
        stop.set()
        swapper.join(5)
    print(f"\nload race: {loads} loads of the good file, {refused} refused, marker {marker.exists()}")
    assert not marker.exists(), (
        f"unpickled a file that failed its sha256 check ({loads} loads, {refused} refused)"
    )
    assert loads + refused > 0
