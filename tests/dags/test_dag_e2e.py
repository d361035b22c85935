"""End to end with real Airflow: `airflow dags test` drives a real uvicorn service over loopback HTTP.

Each scenario gets its own AIRFLOW_HOME with a copy of one migrated SQLite metadata database, its own
service state (RESULTS_DIR, UPLOAD_DIR, DATA_DIR under tmp) and reads the task states back with
`airflow tasks states-for-dag-run`. `airflow dags test` runs the tasks in-process and prints their
logs, so a task's log is the part of its output between "[DAG TEST] starting task_id=<id>" and
"[DAG TEST] end task task_id=<id>".
"""

from __future__ import annotations

import http.server
import json
import random
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Service, free_port, start_service, static_server

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = PROJECT_ROOT / ".airflow-venv" / "bin" / "airflow"
DAG_ID = "breast_cancer_pipeline"
TOKEN = "dag-e2e-token-0123456789abcdef"
TASKS = ("wait_for_api", "train", "new_version", "evaluate", "upload", "on_failure")
DAG_RUN_TIMEOUT = 420  # seconds; a run here takes well under a minute


@dataclass
class DagRunResult:
    returncode: int
    output: str
    states: dict[str, str]

    def section(self, task_id: str) -> str:
        """This task's log lines (all its tries) from the `airflow dags test` output."""
        keep, lines = False, []
        for line in self.output.splitlines():
            if f"[DAG TEST] starting task_id={task_id} " in line:
                keep = True
            if keep:
                lines.append(line)
            if f"[DAG TEST] end task task_id={task_id} " in line:
                keep = False
        return "\n".join(lines)

    def tries(self, task_id: str) -> int:
        return self.output.count(f"[DAG TEST] starting task_id={task_id} ")

    def logged_response(self, task_id: str) -> dict[str, Any]:
        """The JSON body the HttpOperator logged (`log_response=True`)."""
        for line in self.section(task_id).splitlines():
            if "HttpOperator" in line and "] {" in line:
                body = line[line.index("] {") + 2 : line.rindex("}") + 1]
                return json.loads(body)
        raise AssertionError(f"no logged response in {task_id}:\n{self.section(task_id)[-3000:]}")

    def tail(self) -> str:
        return self.output[-6000:]


@pytest.fixture(scope="module")
def migrated_db(
    airflow_python: Path, airflow_env: Callable[..., dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`airflow db migrate` once; every scenario starts from a copy of this SQLite file."""
    home = tmp_path_factory.mktemp("airflow-template")
    proc = subprocess.run(
        [str(AIRFLOW_BIN), "db", "migrate"],
        env=airflow_env(home),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return home / "airflow.db"


@pytest.fixture(scope="module")
def data_base_url(bundled_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bundled CSV and a copy with its Class column shuffled, on a loopback HTTP server."""
    folder = tmp_path_factory.mktemp("data")
    shutil.copy(bundled_csv, folder / "BreastCancer.csv")
    header, *rows = bundled_csv.read_text().splitlines()
    assert header.rsplit(",", 1)[1].strip('"') == "Class"
    features = [row.rsplit(",", 1)[0] for row in rows]
    labels = [row.rsplit(",", 1)[1] for row in rows]
    random.Random(7).shuffle(labels)
    shuffled = [f"{f},{label}" for f, label in zip(features, labels, strict=True)]
    (folder / "shuffled.csv").write_text("\n".join([header, *shuffled]) + "\n")
    with static_server(folder) as base:
        yield base


@pytest.fixture
def run_dag(
    migrated_db: Path, airflow_env: Callable[..., dict[str, str]], tmp_path: Path
) -> Callable[..., DagRunResult]:
    def run(
        port: int,
        *,
        password: str = TOKEN,
        conf: dict[str, Any] | None = None,
        on_line: Callable[[str], None] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> DagRunResult:
        home = tmp_path / f"airflow-home-{len(list(tmp_path.glob('airflow-home-*')))}"  # one per run
        home.mkdir()
        shutil.copy(migrated_db, home / "airflow.db")
        connection = {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http"}
        connection["password"] = password
        settings = {
            "AIRFLOW_CONN_ML_API": json.dumps(connection),
            "ML_PIPELINE_RETRY_DELAY_SECONDS": "1",
            "ML_PIPELINE_POKE_INTERVAL_SECONDS": "1",
            "ML_PIPELINE_WAIT_TIMEOUT_SECONDS": "180",
        }
        env = airflow_env(home, **{**settings, **(extra_env or {})})
        cmd = [str(AIRFLOW_BIN), "dags", "test", DAG_ID]
        if conf is not None:
            cmd += ["--conf", json.dumps(conf)]
        proc = subprocess.Popen(
            cmd, env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        watchdog = threading.Timer(DAG_RUN_TIMEOUT, proc.kill)
        watchdog.start()
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if on_line is not None:
                    on_line(line)
            returncode = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        output = "".join(lines)
        run_ids = re.findall(r"DagRun Finished: dag_id=\S+ logical_date=[^,]+, run_id=([^,\s]+)", output)
        assert run_ids, f"no finished DAG run in the output (rc={returncode}):\n{output[-6000:]}"
        return DagRunResult(returncode, output, task_states(env, home, run_ids[-1]))

    return run


def task_states(env: dict[str, str], home: Path, run_id: str) -> dict[str, str]:
    proc = subprocess.run(
        [str(AIRFLOW_BIN), "tasks", "states-for-dag-run", DAG_ID, run_id, "--output", "json"],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = next(line for line in proc.stdout.splitlines() if line.startswith("["))
    return {row["task_id"]: row["state"] for row in json.loads(table)}


@pytest.fixture
def service_factory(tmp_path: Path, data_base_url: str) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(*, port: int | None = None) -> Service:
        service = start_service(
            tmp_path / "service",
            data_url=f"{data_base_url}/BreastCancer.csv",
            token=TOKEN,
            # the run with conf data_url overrides DATA_URL with another file on the loopback data server
            extra_env={
                "GDRIVE_FOLDER_ID": "",
                "ENVIRONMENT": "development",
                "DATA_URL_ALLOW_PRIVATE_NETWORKS": "true",
            },
            port=port,
        )
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def alert_receiver() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """A loopback HTTP endpoint that records the JSON bodies POSTed to it (the notification hook)."""
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append(json.loads(self.rfile.read(length) or b"null"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), received
    finally:
        server.shutdown()
        server.server_close()


def port_of(service: Service) -> int:
    return int(service.url.rsplit(":", 1)[1])


def served_version(service: Service) -> str:
    response = httpx.get(f"{service.url}/models/current", timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["version"])


def failure_reason(run: DagRunResult, task_id: str) -> str:
    """What on_failure logged for ``task_id`` (without the log line's logger and location suffix)."""
    match = re.search(rf"task {task_id} failed: (.*?)(?: \[\S+\] loc=\S+)?$", run.section("on_failure"), re.M)
    assert match, run.section("on_failure")[-3000:]
    return match.group(1).strip()


def trained_version(run: DagRunResult) -> str:
    match = re.search(r"trained version (\S+) ", run.section("train"))
    assert match, run.section("train")[-3000:]
    return match.group(1)


def test_dag_run_service_up_trains_evaluates_promotes_and_uploads(
    service_factory: Callable[..., Service], run_dag: Callable[..., DagRunResult]
) -> None:
    service = service_factory()
    assert httpx.get(f"{service.url}/ready", timeout=10).status_code == 503  # no model yet

    run = run_dag(port_of(service))

    assert run.returncode == 0, run.tail()
    assert run.states == {**dict.fromkeys(TASKS[:-1], "success"), "on_failure": "skipped"}, run.tail()
    version = trained_version(run)
    assert run.logged_response("train")["version"] == version
    evaluated = run.logged_response("evaluate")
    assert (evaluated["version"], evaluated["gate"]["passed"], evaluated["promoted"]) == (version, True, True)
    assert served_version(service) == version
    report_url = f"{service.url}/models/{version}/report"
    assert f"evaluation report of {version}: {report_url}" in run.section("evaluate")
    page = httpx.get(report_url, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "PASSED the quality gate" in page.text
    ready = httpx.get(f"{service.url}/ready", timeout=10)
    assert (ready.status_code, ready.json()["model_version"]) == (200, version)
    uploaded = run.logged_response("upload")
    assert uploaded["version"] == version
    backup = Path(uploaded["backup_dir"])
    assert backup.parent == service.upload_dir
    assert backup.is_dir() and any(backup.iterdir())
    assert uploaded["drive"]["status"] == "skipped"
    assert TOKEN not in run.output  # the bearer token is never logged

    # the same data, settings and libraries again: nothing new is trained, evaluated or uploaded
    backups = sorted(p.name for p in service.upload_dir.iterdir())
    again = run_dag(port_of(service))

    assert again.returncode == 0, again.tail()
    assert again.states == {
        "wait_for_api": "success",
        "train": "success",
        "new_version": "success",
        "evaluate": "skipped",
        "upload": "skipped",
        "on_failure": "skipped",
    }, again.tail()
    assert again.logged_response("train") | {"version": version, "unchanged": True} == again.logged_response(
        "train"
    )
    assert f"data unchanged since version {version}" in again.section("new_version")
    assert again.tries("evaluate") == again.tries("upload") == 0
    assert served_version(service) == version
    assert sorted(p.name for p in service.upload_dir.iterdir()) == backups
    models = httpx.get(f"{service.url}/models", timeout=10).json()["models"]
    assert [m["version"] for m in models] == [version]


def test_dag_run_gate_failure_fails_evaluate_keeps_served_model(
    service_factory: Callable[..., Service],
    run_dag: Callable[..., DagRunResult],
    data_base_url: str,
    alert_receiver: tuple[int, list[dict[str, Any]]],
) -> None:
    service = service_factory()
    seeded = httpx.post(f"{service.url}/train", json={}, headers=service.auth(), timeout=300)
    assert seeded.status_code == 200, seeded.text
    seeded_version = seeded.json()["version"]
    promoted = httpx.post(
        f"{service.url}/evaluate", json={"version": seeded_version}, headers=service.auth(), timeout=300
    )
    assert (promoted.status_code, promoted.json()["promoted"]) == (200, True), promoted.text

    alert_port, alerts = alert_receiver
    alert_conn = {"conn_type": "http", "host": "127.0.0.1", "port": alert_port, "schema": "http"}

    run = run_dag(
        port_of(service),
        conf={"data_url": f"{data_base_url}/shuffled.csv"},
        extra_env={
            "ML_PIPELINE_ALERT_CONN_ID": "ml_alerts",
            "AIRFLOW_CONN_ML_ALERTS": json.dumps(alert_conn),
        },
    )

    assert run.returncode != 0, run.tail()
    assert run.states == {
        "wait_for_api": "success",
        "train": "success",
        "new_version": "success",
        "evaluate": "failed",
        "upload": "upstream_failed",
        "on_failure": "failed",
    }, run.tail()
    version = trained_version(run)
    assert version != seeded_version
    assert run.logged_response("train")["data_source"].endswith("/shuffled.csv")
    verdict = run.logged_response("evaluate")
    assert (verdict["version"], verdict["gate"]["passed"], verdict["promoted"]) == (version, False, False)
    assert verdict["gate"]["reasons"]
    evaluate_log = run.section("evaluate")
    failure = next(line for line in evaluate_log.splitlines() if "AirflowFailException: quality gate" in line)
    assert f"quality gate FAILED for version {version}: " in failure
    for reason in verdict["gate"]["reasons"]:
        assert reason in failure
    assert f"the served model stays {seeded_version}" in failure
    report_url = f"{service.url}/models/{version}/report"
    assert f"evaluation report of {version}: {report_url}" in evaluate_log
    page = httpx.get(report_url, timeout=30)
    assert page.status_code == 200 and "REJECTED by the quality gate" in page.text
    assert run.tries("evaluate") == 1  # a verdict is not retried
    assert f"task evaluate failed: quality gate FAILED for version {version}" in run.section("on_failure")
    assert len(alerts) == 1, alerts  # the notification hook got the same summary
    assert alerts[0]["failed_tasks"].keys() == {"evaluate"}
    assert alerts[0]["failed_tasks"]["evaluate"].startswith(f"quality gate FAILED for version {version}")
    assert run.tries("upload") == 0
    assert not service.upload_dir.exists() or not any(service.upload_dir.iterdir())
    assert served_version(service) == seeded_version


def test_dag_run_late_service_wait_for_api_waits_then_succeeds(
    service_factory: Callable[..., Service], run_dag: Callable[..., DagRunResult]
) -> None:
    port = free_port()  # nothing listens here until the sensor has been refused at least once
    refused = threading.Event()
    started: list[Service] = []
    errors: list[BaseException] = []

    def start_when_refused() -> None:
        if refused.wait(DAG_RUN_TIMEOUT):
            try:
                started.append(service_factory(port=port))
            except BaseException as exc:  # reported by the assertions below
                errors.append(exc)

    starter = threading.Thread(target=start_when_refused, daemon=True)
    starter.start()

    def on_line(line: str) -> None:
        if "Connection refused (poke " in line:
            refused.set()

    run = run_dag(port, on_line=on_line)
    refused.set()
    starter.join(120)

    assert not errors, errors
    assert started, "the service was never started: the sensor never reported a refused connection"
    assert run.returncode == 0, run.tail()
    assert run.states == {**dict.fromkeys(TASKS[:-1], "success"), "on_failure": "skipped"}, run.tail()
    sensor_log = run.section("wait_for_api")
    refusals = [line for line in sensor_log.splitlines() if "Connection refused" in line]
    assert refusals, sensor_log[-3000:]
    for n, line in enumerate(refusals, 1):  # one line per refused poke, nothing else
        assert re.search(
            rf"GET http://127\.0\.0\.1:{port}/ready: Connection refused \(poke {n}, \d+ s of 180 s\)", line
        )
    assert "Traceback" not in sensor_log and "Tenacity" not in sensor_log, sensor_log[-3000:]
    assert "service is up without a served model" in sensor_log
    assert run.tries("wait_for_api") == 1  # it waited; it did not fail and retry
    assert served_version(started[0]) == trained_version(run)


def test_dag_run_wrong_token_fails_train_once_with_401(
    service_factory: Callable[..., Service], run_dag: Callable[..., DagRunResult]
) -> None:
    service = service_factory()

    run = run_dag(port_of(service), password="not-the-token")

    assert run.returncode != 0, run.tail()
    assert run.states == {
        "wait_for_api": "success",
        "train": "failed",
        "new_version": "upstream_failed",
        "evaluate": "upstream_failed",
        "upload": "upstream_failed",
        "on_failure": "failed",
    }, run.tail()
    train_log = run.section("train")
    assert "AirflowFailException: POST /train failed: HTTP 401" in train_log
    assert run.tries("train") == 1  # no retry storm
    assert "task train failed: POST /train failed: HTTP 401" in run.section("on_failure")
    models = httpx.get(f"{service.url}/models", timeout=10)
    assert (models.status_code, models.json()["models"]) == (200, [])


def test_dag_run_service_never_up_fails_wait_for_api_with_reason(
    run_dag: Callable[..., DagRunResult],
) -> None:
    port = free_port()  # nothing ever listens here
    run = run_dag(port, extra_env={"ML_PIPELINE_WAIT_TIMEOUT_SECONDS": "5"})

    assert run.returncode != 0, run.tail()
    assert run.states == {
        "wait_for_api": "failed",
        "train": "upstream_failed",
        "new_version": "upstream_failed",
        "evaluate": "upstream_failed",
        "upload": "upstream_failed",
        "on_failure": "failed",
    }, run.tail()
    assert run.tries("wait_for_api") == 1  # a sensor timeout is final
    sensor_log = run.section("wait_for_api")
    pokes = [line for line in sensor_log.splitlines() if "Connection refused (poke " in line]
    assert len(pokes) >= 3, sensor_log[-3000:]
    assert "Tenacity" not in sensor_log and sensor_log.count("Traceback") <= 1  # the final failure only
    reason = failure_reason(run, "wait_for_api")
    expected = rf"service unreachable at http://127\.0\.0\.1:{port}/ready for \d+ s \({len(pokes)} pokes; "
    assert re.fullmatch(expected + r"last: Connection refused\)", reason), reason


def _ready_once_then_gone(port: int, requests: list[bytes]) -> threading.Thread:
    """A stand-in for a service that answers one GET /ready as the service does without a model (503, its
    JSON detail), then is gone: the listening socket is closed before that answer is sent, so every later
    connection is refused. Deterministic, unlike stopping a real service when the sensor's log line arrives
    (the train task's first POST could get in before the stop on a loaded machine)."""
    listener = socket.create_server(("127.0.0.1", port))
    body = json.dumps({"detail": "no model is served yet: POST /train, then POST /evaluate"}).encode()

    def serve() -> None:
        connection, _ = listener.accept()
        listener.close()  # gone between the sensor and the first POST
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                request += chunk
            requests.append(request)
            connection.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_dag_run_service_down_after_ready_train_reports_unreachable(
    run_dag: Callable[..., DagRunResult],
) -> None:
    port, requests = free_port(), []
    stand_in = _ready_once_then_gone(port, requests)

    run = run_dag(port)

    stand_in.join(timeout=5)
    assert [r.split(b" ", 2)[:2] for r in requests] == [[b"GET", b"/ready"]], run.tail()
    assert run.returncode != 0, run.tail()
    assert "service is up without a served model" in run.output, run.tail()
    assert (run.states["wait_for_api"], run.states["train"], run.states["on_failure"]) == (
        "success",
        "failed",
        "failed",
    ), run.tail()
    assert run.tries("train") == 3  # a refused connection is retried like a 5xx
    reason = failure_reason(run, "train")
    assert reason == f"POST http://127.0.0.1:{port}/train: service unreachable: Connection refused"


def test_dag_run_bad_data_url_param_names_the_param(
    service_factory: Callable[..., Service], run_dag: Callable[..., DagRunResult], data_base_url: str
) -> None:
    service = service_factory()
    missing = f"{data_base_url}/missing.csv"

    run = run_dag(port_of(service), conf={"data_url": missing})

    assert run.returncode != 0, run.tail()
    assert (run.states["train"], run.states["on_failure"]) == ("failed", "failed"), run.tail()
    message = failure_reason(run, "train")
    assert message.startswith(f"POST /train failed: HTTP 502: data source {missing} answered HTTP 404")
    assert f"the source was this run's data_url param {missing}, not the service's DATA_URL" in message
    assert "set DATA_URL" not in run.output
