"""`make stack` end to end: ``python -m scripts.stack up`` brings up the service, Airflow standalone and
Prometheus on free loopback ports with its state in a temporary folder; the DAG runs through Airflow's REST
API (Airflow 3: a JWT from POST /auth/token, then POST /api/v2/dags/{dag_id}/dagRuns) and retrains the
served model; Prometheus scrapes the service; ``down`` leaves no process of the stack and no listener.

What is left running is checked with ``ps`` and plain connects, not with the script's own helpers.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, free_port, stop_process

DAG_ID = "breast_cancer_pipeline"
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
UP_TIMEOUT = 600.0  # Airflow standalone needs 1-2 minutes on a small shared machine
RUN_TIMEOUT = 420.0  # a DAG run here takes well under a minute
PARTS = ("api", "airflow", "prometheus")


@dataclass
class RunningStack:
    directory: Path
    ports: dict[str, int]
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    output_path: Path

    def url(self, part: str) -> str:
        return f"http://127.0.0.1:{self.ports[part]}"

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def log(self, part: str) -> str:
        path = self.directory / "logs" / f"{part}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def _stack_command(command: str, env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.stack", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        **kwargs,
    )


def _env(tmp: Path, ports: dict[str, int]) -> dict[str, str]:
    """Our environment without Airflow or stack settings, the service's state under ``tmp``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "ML_PIPELINE_", "STACK_", "PROMETHEUS_MULTIPROC"))
    }
    env.update(
        STACK_DIR=str(tmp / "stack"),
        STACK_API_PORT=str(ports["api"]),
        STACK_AIRFLOW_PORT=str(ports["airflow"]),
        STACK_PROMETHEUS_PORT=str(ports["prometheus"]),
        ENVIRONMENT="development",
        DATA_URL="",  # the bundled CSV
        DATA_DIR=str(tmp / "data"),
        RESULTS_DIR=str(tmp / "results"),
        UPLOAD_DIR=str(tmp / "upload"),
        GDRIVE_FOLDER_ID="",
        API_TOKEN=secrets.token_urlsafe(24),
        WORKERS="1",
        MODEL_POLL_SECONDS="0.2",
        ML_PIPELINE_POKE_INTERVAL_SECONDS="2",
        ML_PIPELINE_RETRY_DELAY_SECONDS="5",
    )
    return env


def _poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    """The first truthy value of ``check()`` within ``timeout`` seconds; transport errors count as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            value = check()
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _session_processes(sid: int) -> list[str]:
    """``ps`` lines (pid, state, command) of the live processes of session ``sid``."""
    out = subprocess.run(["ps", "-e", "-o", "sid=,pid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines()]
    return [" ".join(row[1:]) for row in rows if len(row) >= 3 and int(row[0]) == sid and row[2][0] != "Z"]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[RunningStack]:
    ports = {part: free_port() for part in PARTS}
    env = _env(tmp_path, ports)
    output_path = tmp_path / "stack-up.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.stack", "up"],
        cwd=ROOT,
        env=env,
        stdout=output_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    running = RunningStack(tmp_path / "stack", ports, env, proc, output_path)
    try:
        deadline = time.monotonic() + UP_TIMEOUT
        while not (running.directory / "stack.json").exists():
            if proc.poll() is not None:
                pytest.fail(f"`stack up` exited with {proc.returncode}:\n{running.output()[-6000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the stack was not up within {UP_TIMEOUT:.0f} s:\n{running.output()[-6000:]}")
            time.sleep(1)
        yield running
    finally:
        if proc.poll() is None:
            _stack_command("down", env, timeout=300)
        stop_process(proc)


@pytest.mark.integration
@pytest.mark.airflow
@pytest.mark.slow
def test_stack_dag_run_retrains_and_down_leaves_nothing(stack: RunningStack) -> None:
    api, airflow, prometheus = stack.url("api"), stack.url("airflow"), stack.url("prometheus")
    output = stack.output()
    assert "Grafana and statsd-exporter are not installable here" in output
    assert f"{api}/docs" in output and airflow in output and prometheus in output

    # no model was served in this fresh RESULTS_DIR, so `up` ran the pipeline once before serving
    assert (stack.directory / "logs" / "pipeline.log").exists()
    response = httpx.get(f"{api}/models/current", timeout=10)
    assert response.status_code == 200, response.text
    before = response.json()["version"]

    # Airflow 3 REST API: the admin password standalone generated, a JWT, then the DAG
    password = json.loads((stack.directory / "airflow-home" / PASSWORD_FILE).read_text())["admin"]
    assert f"login admin / {password}" in output
    login = httpx.post(f"{airflow}/auth/token", json={"username": "admin", "password": password}, timeout=30)
    assert login.status_code == 201, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    dag_url = f"{airflow}/api/v2/dags/{DAG_ID}"
    _poll(lambda: httpx.get(dag_url, headers=headers, timeout=30).status_code == 200, 120, "the DAG")
    unpaused = httpx.patch(dag_url, json={"is_paused": False}, headers=headers, timeout=30)
    assert unpaused.status_code == 200 and unpaused.json()["is_paused"] is False, unpaused.text

    # force: `make stack` already trained on the same data, which an unforced run would find unchanged
    triggered = httpx.post(
        f"{dag_url}/dagRuns",
        json={"logical_date": None, "conf": {"force": True}},
        headers=headers,
        timeout=30,
    )
    assert triggered.status_code == 200, triggered.text
    run_url = f"{dag_url}/dagRuns/{triggered.json()['dag_run_id']}"

    def finished() -> dict[str, Any] | None:
        run: dict[str, Any] = httpx.get(run_url, headers=headers, timeout=30).json()
        return run if run["state"] in {"success", "failed"} else None

    run = _poll(finished, RUN_TIMEOUT, f"DAG run {run_url}", interval=2)
    tasks = httpx.get(f"{run_url}/taskInstances", headers=headers, timeout=30).json()["task_instances"]
    states = {task["task_id"]: task["state"] for task in tasks}
    assert run["state"] == "success", f"{states}\n{stack.log('airflow')}\n{stack.log('api')}"
    assert states == {
        "wait_for_api": "success",
        "train": "success",
        "new_version": "success",
        "evaluate": "success",
        "upload": "success",
        "on_failure": "skipped",
    }

    # the DAG trained, evaluated and promoted a new version through the service
    after = httpx.get(f"{api}/models/current", timeout=10).json()["version"]
    assert after != before
    models = {m["version"]: m for m in httpx.get(f"{api}/models", timeout=10).json()["models"]}
    assert models[after]["status"] == "passed"

    # Prometheus scrapes the service with the project's config (Airflow's job left out) and rules
    def api_target_up() -> list[dict[str, Any]] | None:
        targets: list[dict[str, Any]] = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"][
            "activeTargets"
        ]
        up = [t for t in targets if t["labels"]["job"] == "api" and t["health"] == "up"]
        return targets if up else None

    targets = _poll(api_target_up, 120, "Prometheus to scrape the api target")
    assert {t["labels"]["job"] for t in targets} == {"api", "prometheus"}
    assert [t["scrapeUrl"] for t in targets if t["labels"]["job"] == "api"] == [f"{api}/metrics"]
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert "ApiDown" in {rule["name"] for group in rules for rule in group["rules"]}

    # stop: every process of every part's session ends, and nothing listens on the ports any more
    pids = {path.stem: int(path.read_text().split()[0]) for path in (stack.directory / "pids").glob("*.pid")}
    assert set(pids) == set(PARTS)
    assert len(_session_processes(pids["airflow"])) >= 5  # standalone and its four components at least
    down = _stack_command("down", stack.env, timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert stack.proc.wait(60) == 0, stack.output()[-4000:]
    left = {part: _session_processes(pid) for part, pid in pids.items()}
    assert left == {part: [] for part in PARTS}
    assert [part for part, port in stack.ports.items() if _listening(port)] == []
    assert not list((stack.directory / "pids").glob("*.pid"))
    assert not (stack.directory / "stack.pid").exists() and not (stack.directory / "stack.json").exists()


def test_stack_up_port_taken_refused(tmp_path: Path) -> None:
    ports = {part: free_port() for part in PARTS}
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        ports["airflow"] = listener.getsockname()[1]
        result = _stack_command("up", _env(tmp_path, ports), timeout=120)
    assert result.returncode == 1
    assert f"airflow port {ports['airflow']} already in use" in result.stderr
    assert "STACK_AIRFLOW_PORT" in result.stderr
    assert not (tmp_path / "stack" / "pids").exists() and not (tmp_path / "results").exists()


def test_stack_down_nothing_running_succeeds(tmp_path: Path) -> None:
    result = _stack_command("down", _env(tmp_path, {part: free_port() for part in PARTS}), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no stack was running" in result.stderr
