"""Where the Airflow virtual environment is, and the environment an Airflow subprocess runs with.

Airflow lives in its own venv (`make airflow-venv`, `.airflow-venv/`), never in the service's, so every
check that needs Airflow runs that venv's python or `airflow` in a subprocess.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAGS_DIR = PROJECT_ROOT / "dags"
AIRFLOW_VENV = PROJECT_ROOT / ".airflow-venv"
AIRFLOW_PY = AIRFLOW_VENV / "bin" / "python"
AIRFLOW_BIN = AIRFLOW_VENV / "bin" / "airflow"


def airflow_subprocess_env(airflow_home: Path, **extra: str) -> dict[str, str]:
    """A private AIRFLOW_HOME with SQLite and our dags folder only; nothing Airflow-ish leaks in from ours."""
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
