"""Fixtures of the etl tests: a clock the tests move, one training on the bundled data to copy, and
``python -m etl`` run in this process (``etl_cli``) or as a subprocess (``etl_subprocess``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import etl.__main__
from etl.pipeline import TrainSummary
from etl.settings import Settings
from tests.conftest import BUNDLED_CSV, ROOT
from tests.in_process import Ran, run_in_process, unset_prefixed
from tests.pipeline_support import copy_tree, make_settings, served_template_folder, trained_template_folder


class FakeClock:
    """Time that moves only when the code under test sleeps (or a test moves ``now``)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainSummary]:
    """A folder holding one version trained on the bundled data with the default settings, not evaluated,
    and its summary. Tests copy it (:func:`trained_copy`) instead of training again."""
    base, summary = trained_template_folder(tmp_path_factory)
    return base, TrainSummary(**summary)


@pytest.fixture(scope="session")
def served_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The trained template evaluated and promoted (the app tests' template, built once per run), and its
    version. Tests copy it (:func:`served_copy`) instead of evaluating the trained template again."""
    return served_template_folder(tmp_path_factory)


def served_copy(template: tuple[Path, str], dest: Path, **overrides: object) -> tuple[Settings, str]:
    """A copy of ``served_template`` in ``dest``, with settings rooted there, and the served version."""
    base, version = template
    copy_tree(base, dest)
    return make_settings(dest, **overrides), version


def trained_copy(
    template: tuple[Path, TrainSummary], dest: Path, **overrides: object
) -> tuple[Settings, TrainSummary]:
    """A copy of ``trained_template`` in ``dest``, with settings rooted there, and the version's summary."""
    base, trained = template
    copy_tree(base, dest)
    return make_settings(dest, **overrides), trained


# --- python -m etl -------------------------------------------------------------------------------------

CLEARED_PREFIXES = ("GATE_", "DATA_", "GDRIVE_", "NESTED_", "REGISTRY_", "ARTIFACT_", "TRAINING_LEASE_")


def cli_env(workdir: Path, **env: str) -> dict[str, str]:
    """The settings of a command run in ``workdir``: all state under it, the bundled data, no retries."""
    return {
        "DATA_URL": str(BUNDLED_CSV),
        "DATA_DIR": str(workdir / "data"),
        "RESULTS_DIR": str(workdir / "results"),
        "UPLOAD_DIR": str(workdir / "upload"),
        "DOWNLOAD_RETRIES": "0",
        **env,
    }


def etl_subprocess(workdir: Path, *args: str, **env: str) -> Ran:
    """Run ``python -m etl ARGS`` with cwd and all state under ``workdir`` (no .env is read)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED_PREFIXES)}
    full_env.update({"PYTHONPATH": str(ROOT), **cli_env(workdir, **env)})
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "etl", *args],
        cwd=workdir,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Ran(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def etl_cli(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> Callable[..., Ran]:
    """``etl_cli(workdir, *args, **env)``: ``main(args)`` in this process, as ``etl_subprocess`` would run it
    (tests/in_process.py)."""

    def run(workdir: Path, *args: str, **env: str) -> Ran:
        workdir.mkdir(parents=True, exist_ok=True)
        return run_in_process(
            monkeypatch,
            capfd,
            caplog,
            lambda: etl.__main__.main(list(args)),
            cwd=workdir,
            env=cli_env(workdir, **env),
            unset=unset_prefixed(CLEARED_PREFIXES),
        )

    return run
