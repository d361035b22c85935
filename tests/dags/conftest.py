"""Shared bits of the DAG tests: where the project, the DAG and the Airflow virtual environment are.

Airflow lives in its own venv (`make airflow-venv`, `.airflow-venv/`), never in the service's, so every
check that needs Airflow runs that venv's python or `airflow` in a subprocess.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAGS_DIR = PROJECT_ROOT / "dags"
AIRFLOW_VENV = PROJECT_ROOT / ".airflow-venv"
AIRFLOW_PY = AIRFLOW_VENV / "bin" / "python"
AIRFLOW_BIN = AIRFLOW_VENV / "bin" / "airflow"


def _airflow_env(airflow_home: Path, **extra: str) -> dict[str, str]:
    """Environment for an Airflow subprocess: a private AIRFLOW_HOME with SQLite, our dags folder only."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW_", "AIRFLOW__", "ML_PIPELINE_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(
        AIRFLOW_HOME=str(airflow_home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_DIR),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{airflow_home / 'airflow.db'}",
        PATH=f"{AIRFLOW_VENV / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def airflow_python() -> Path:
    """The Airflow venv's python; a clear failure (not a skip) when `make airflow-venv` was not run."""
    if not AIRFLOW_PY.exists() or not AIRFLOW_BIN.exists():
        pytest.fail(f"{AIRFLOW_VENV} is missing: run `make airflow-venv` (make test does it)")
    return AIRFLOW_PY


@pytest.fixture(scope="session")
def airflow_env() -> Callable[..., dict[str, str]]:
    """``airflow_env(airflow_home, **extra)``: the environment for an Airflow subprocess."""
    return _airflow_env
