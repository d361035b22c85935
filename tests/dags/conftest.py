"""Fixtures of the DAG tests (the Airflow venv and its subprocess environment: tests/dags/airflow_env.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dags.airflow_env import AIRFLOW_BIN, AIRFLOW_PY, AIRFLOW_VENV, airflow_subprocess_env


@pytest.fixture(scope="session")
def airflow_python() -> Path:
    """The Airflow venv's python; a clear failure (not a skip) when `make airflow-venv` was not run."""
    if not AIRFLOW_PY.exists() or not AIRFLOW_BIN.exists():
        pytest.fail(f"{AIRFLOW_VENV} is missing: run `make airflow-venv` (make test does it)")
    return AIRFLOW_PY


@pytest.fixture(scope="session")
def airflow_env() -> Callable[..., dict[str, str]]:
    """``airflow_env(airflow_home, **extra)``: the environment for an Airflow subprocess."""
    return airflow_subprocess_env
