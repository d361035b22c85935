"""Real Airflow 3 (the .airflow-venv from `make airflow-venv`) sends StatsD to a UDP socket on loopback;
what arrives must map, through prometheus/statsd-mapping.yml, to the labelled series the dashboard reads.

The DAG-run durations are emitted by the scheduler (DagRun.update_state), which `airflow dags test` does
not initialise stats for, so that part calls the real DagRun method in a process set up the way the
scheduler sets up stats. Task metrics come from a real `airflow dags test` run whose service is absent.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dags.airflow_env import AIRFLOW_VENV, airflow_subprocess_env
from tests.deploy.monitoring import statsd_map

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

DAG_ID = "breast_cancer_pipeline"

EMIT_DAGRUN_DURATIONS = """
from datetime import datetime, timedelta, timezone

from airflow.configuration import conf
from airflow.models.dagrun import DagRun
from airflow.observability import stats
from airflow.observability.metrics import stats_utils

DAG_ID = "breast_cancer_pipeline"
# as the scheduler does before its loop (SchedulerJobRunner._execute)
stats.initialize(
    factory=stats_utils.get_stats_factory(),
    export_legacy_names=conf.getboolean("metrics", "legacy_names_on"),
)
end = datetime(2026, 1, 1, tzinfo=timezone.utc)
for state, seconds in (("success", 120), ("failed", 60)):
    run = DagRun(dag_id=DAG_ID, run_id="manual__" + state, run_type="manual", state=state)
    run.start_date, run.end_date = end - timedelta(seconds=seconds), end
    run._emit_duration_stats_for_finished_state()
"""


@contextlib.contextmanager
def statsd_listener() -> Iterator[tuple[int, list[str]]]:
    """A UDP socket on 127.0.0.1 collecting StatsD lines (``name:value|type``)."""
    lines: list[str] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                data = sock.recv(65535)
            except TimeoutError:
                continue
            lines.extend(line for line in data.decode().splitlines() if line)

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], lines
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def _airflow_env(home: Path, statsd_port: int, **extra: str) -> dict[str, str]:
    # the same [metrics] settings docker-compose.yml gives Airflow, pointed at the test's socket
    return airflow_subprocess_env(
        home,
        AIRFLOW__METRICS__STATSD_ON="true",
        AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
        AIRFLOW__METRICS__STATSD_PORT=str(statsd_port),
        AIRFLOW__METRICS__STATSD_PREFIX="airflow",
        **extra,
    )


@pytest.fixture(scope="module")
def airflow_python() -> Path:
    python = AIRFLOW_VENV / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{AIRFLOW_VENV} is missing: run `make airflow-venv` (make test does it)")
    check = subprocess.run([str(python), "-c", "import statsd"], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.fail("statsd is not installed in .airflow-venv: it is pinned in dags/requirements.txt")
    return python


def _mapped(lines: list[str]) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in lines:
        name, rest = line.split(":", 1)
        value, metric_type = rest.split("|")[:2]
        mapped = statsd_map(name, metric_type)
        if mapped is not None:
            out.append((mapped[0], mapped[1], float(value)))
    return out


def test_airflow_dagrun_duration_statsd_maps_to_dag_and_state(tmp_path: Path, airflow_python: Path) -> None:
    with statsd_listener() as (port, lines):
        result = subprocess.run(
            [str(airflow_python), "-c", EMIT_DAGRUN_DURATIONS],
            env=_airflow_env(tmp_path, port),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    durations = sorted(
        (labels["state"], value)
        for name, labels, value in _mapped(lines)
        if name == "airflow_dagrun_duration_seconds"
    )
    # statsd-exporter turns the milliseconds into seconds; the mapping must keep one series per dag and state
    assert durations == [("failed", 60000.0), ("success", 120000.0)], lines
    assert all(
        labels == {"dag_id": DAG_ID, "state": labels["state"]}
        for name, labels, _ in _mapped(lines)
        if name == "airflow_dagrun_duration_seconds"
    )


@pytest.mark.slow
def test_airflow_dag_run_task_statsd_maps_to_dag_and_task(tmp_path: Path, airflow_python: Path) -> None:
    """`airflow dags test` with the service absent: wait_for_api times out, the run fails."""
    airflow = str(AIRFLOW_VENV / "bin" / "airflow")
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    with closed_port, statsd_listener() as (port, lines):
        connection = json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": closed_port.getsockname()[1], "schema": "http"}
        )
        env = _airflow_env(
            tmp_path,
            port,
            AIRFLOW_CONN_ML_API=connection,
            ML_PIPELINE_POKE_INTERVAL_SECONDS="1",
            ML_PIPELINE_WAIT_TIMEOUT_SECONDS="3",
            ML_PIPELINE_RETRY_DELAY_SECONDS="1",
        )
        migrate = subprocess.run(
            [airflow, "db", "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
        run = subprocess.run(
            [airflow, "dags", "test", DAG_ID],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=400,
        )
    assert run.returncode != 0, "the run should fail: nothing answers on the service port"
    assert "DagRun failed" in run.stdout + run.stderr
    mapped = _mapped(lines)
    finished = {
        (labels["task_id"], labels["state"]): value
        for name, labels, value in mapped
        if name == "airflow_task_finish_total" and labels["dag_id"] == DAG_ID
    }
    assert finished.get(("wait_for_api", "failed")) == 1, lines
    durations = {labels["task_id"] for name, labels, _ in mapped if name == "airflow_task_duration_seconds"}
    assert "wait_for_api" in durations, lines
    started = {labels["task_id"] for name, labels, _ in mapped if name == "airflow_task_start_total"}
    assert "wait_for_api" in started, lines
