"""DAG integrity: real Airflow (the `.airflow-venv`) imports and describes the DAG; we check the result.

The static checks (no project imports, `ruff --select AIR`) run in the service venv; everything that
needs Airflow runs `_inspect_dag.py` with the Airflow venv's python in a subprocess.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = PROJECT_ROOT / "dags" / "breast_cancer_pipeline.py"
DAG_ID = "breast_cancer_pipeline"
INSPECTOR = Path(__file__).with_name("_inspect_dag.py")
HTTP_TASKS = ("train", "evaluate", "upload")


@pytest.fixture(scope="module")
def inspect_dag(
    airflow_python: Path, airflow_env: Callable[..., dict[str, str]]
) -> Callable[..., dict[str, Any]]:
    """``inspect_dag(tmp_path, **env)``: the JSON description `_inspect_dag.py` makes of the DAG."""

    def inspect(tmp_path: Path, **env: str) -> dict[str, Any]:
        return _inspect(airflow_python, airflow_env, tmp_path, **env)

    return inspect


def _inspect(
    airflow_python: Path, airflow_env: Callable[..., dict[str, str]], tmp_path: Path, **env: str
) -> dict[str, Any]:
    out = tmp_path / "report.json"
    home = tmp_path / "airflow-home"
    home.mkdir()
    proc = subprocess.run(
        [str(airflow_python), str(INSPECTOR), str(DAG_FILE), DAG_ID, str(out)],
        env=airflow_env(home, **env),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def report(
    inspect_dag: Callable[..., dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    return inspect_dag(tmp_path_factory.mktemp("inspect"))


# --- static checks (no Airflow needed) ----------------------------------------------------------


def test_dag_file_imports_no_project_code() -> None:
    tree = ast.parse(DAG_FILE.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in imported}
    assert not roots & {"app", "etl", "tests"}, roots
    assert {"airflow", "requests"} >= roots - set(sys.stdlib_module_names), roots


def test_dag_file_ruff_airflow_rules_clean() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    proc = subprocess.run(
        [str(ruff), "check", "--select", "AIR", "--output-format", "concise", "dags/"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All checks passed" in proc.stdout


# --- real Airflow -------------------------------------------------------------------------------


@pytest.mark.airflow
def test_dag_import_no_errors_and_no_io(report: dict[str, Any]) -> None:
    assert report["import_errors"] == {}
    assert report["dag_ids"] == [DAG_ID]
    assert report["io_at_import"] == []
    assert report["project_modules"] == []


@pytest.mark.airflow
def test_dag_settings_match_issue(report: dict[str, Any]) -> None:
    dag = report["dag"]
    assert dag["schedule"] == "@weekly"
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1
    assert dag["start_date"] == "2026-01-01T00:00:00+00:00"
    assert {"ml", "retraining"} <= set(dag["tags"])
    assert dag["doc_md"].lstrip().startswith("### Breast-cancer model retraining")
    assert dag["params"]["data_url"]["value"] is None
    assert dag["params"]["data_url"]["schema"]["type"] == ["null", "string"]
    assert dag["params"]["promote"]["value"] is True
    assert dag["params"]["promote"]["schema"]["type"] == "boolean"
    assert dag["params"]["force"]["value"] is False
    assert dag["params"]["force"]["schema"]["type"] == "boolean"


@pytest.mark.airflow
def test_dag_tasks_and_dependencies(report: dict[str, Any]) -> None:
    tasks = report["dag"]["tasks"]
    assert set(tasks) == {"wait_for_api", "train", "new_version", "evaluate", "upload", "on_failure"}
    assert tasks["wait_for_api"]["upstream"] == []
    assert tasks["train"]["upstream"] == ["wait_for_api"]
    assert tasks["new_version"]["upstream"] == ["train"]
    assert tasks["new_version"]["operator"] == "_ShortCircuitDecoratedOperator"
    assert tasks["evaluate"]["upstream"] == ["new_version"]
    assert tasks["upload"]["upstream"] == ["evaluate"]
    assert tasks["on_failure"]["upstream"] == ["evaluate", "train", "upload", "wait_for_api"]
    assert tasks["on_failure"]["trigger_rule"] == "one_failed"
    assert tasks["on_failure"]["downstream"] == []
    for task_id in ("wait_for_api", *HTTP_TASKS):
        assert tasks[task_id]["trigger_rule"] == "all_success"


@pytest.mark.airflow
def test_dag_every_task_has_retries_delay_and_timeout(report: dict[str, Any]) -> None:
    tasks = report["dag"]["tasks"]
    for task_id, task in tasks.items():
        assert task["on_failure_callback"] == ["record_failure"], task_id  # the reason on_failure reports
        assert task["execution_timeout"] and task["execution_timeout"] > 0, task_id
        assert task["retry_delay"] and task["retry_delay"] > 0, task_id
        expected_min_retries = 0 if task_id == "on_failure" else 2
        assert task["retries"] >= expected_min_retries, task_id
    assert tasks["upload"]["retries"] >= 3  # covers a Drive outage


@pytest.mark.airflow
def test_dag_http_tasks_configured(report: dict[str, Any]) -> None:
    tasks = report["dag"]["tasks"]
    sensor = tasks["wait_for_api"]
    # an HttpSensor that takes a refused connection as "not yet" itself (one log line, no traceback)
    assert (sensor["operator"], "HttpSensor" in sensor["bases"]) == ("ServiceReadySensor", True)
    assert (sensor["endpoint"], sensor["method"], sensor["http_conn_id"]) == ("/ready", "GET", "ml_api")
    assert sensor["silent_fail"] is False  # an unexpected error fails at once instead of being retried
    assert sensor["response_check"] == "check_ready"
    assert sensor["extra_options"]["check_response"] is False  # 5xx goes to the response_check
    assert sensor["mode"] == "poke"
    assert 0 < sensor["poke_interval"] < sensor["timeout"] < sensor["execution_timeout"]
    for task_id in HTTP_TASKS:
        task = tasks[task_id]
        assert task["operator"] == "HttpOperator", task_id
        assert (task["endpoint"], task["method"], task["http_conn_id"]) == (f"/{task_id}", "POST", "ml_api")
        assert task["deferrable"] is False, task_id
        assert task["log_response"] is True, task_id
        assert task["auth_type"] == "BearerTokenAuth", task_id
        assert task["response_check"] == f"check_{task_id}", task_id
        connect, read = task["extra_options"]["timeout"]
        assert 0 < connect <= read < task["execution_timeout"], task_id
    assert tasks["train"]["response_filter"] == "trained_version"


@pytest.mark.airflow
@pytest.mark.parametrize(
    ("env_value", "expected"),
    [("None", None), ("none", None), ("0 3 * * 1", "0 3 * * 1"), ("@daily", "@daily")],
)
def test_dag_schedule_from_env(
    inspect_dag: Callable[..., dict[str, Any]], tmp_path: Path, env_value: str, expected: str | None
) -> None:
    dag = inspect_dag(tmp_path, ML_PIPELINE_SCHEDULE=env_value)["dag"]
    assert dag["schedule"] == expected


@pytest.mark.airflow
def test_dag_retry_and_wait_settings_from_env(
    inspect_dag: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    tasks = inspect_dag(
        tmp_path,
        ML_PIPELINE_RETRY_DELAY_SECONDS="2",
        ML_PIPELINE_POKE_INTERVAL_SECONDS="1",
        ML_PIPELINE_WAIT_TIMEOUT_SECONDS="30",
    )["dag"]["tasks"]
    assert {task["retry_delay"] for task in tasks.values()} == {2.0}
    assert (tasks["wait_for_api"]["poke_interval"], tasks["wait_for_api"]["timeout"]) == (1.0, 30.0)


# --- the response checks, run by real Airflow on hand-built responses ---------------------------

CHECK_CASES = {
    # wait_for_api keeps poking (false) while the service starts, passes once it answers
    "ready_200": "ok",
    "ready_503_no_model": "ok",
    "ready_503_other": "false",
    "ready_502_proxy_html": "false",
    "ready_404": "false",
    "ready_401": "fail",
    # fail fast (no retry) on a client error; retry on busy / server / upstream errors
    "train_200": "ok",
    "train_200_without_version": "fail",
    "train_401": "fail",
    "train_403": "fail",
    "train_422": "fail",
    "train_409": "retry",
    "train_500": "retry",
    "train_502": "retry",
    "train_422_data_url_param": "fail",
    "train_502_data_url_param": "retry",
    "evaluate_passed_promoted": "ok",
    "evaluate_passed_promote_false": "ok",
    "evaluate_passed_not_promoted": "retry",
    "evaluate_gate_failed": "fail",
    "evaluate_404": "fail",
    "upload_200": "ok",
    "upload_502_drive": "retry",
}


@pytest.mark.airflow
@pytest.mark.parametrize(("case", "expected"), sorted(CHECK_CASES.items()))
def test_dag_response_check_outcome(report: dict[str, Any], case: str, expected: str) -> None:
    result = report["checks"][case]
    assert result["outcome"] == expected, result


@pytest.mark.airflow
def test_dag_gate_failure_message_lists_reasons(report: dict[str, Any]) -> None:
    message = report["checks"]["evaluate_gate_failed"]["message"]
    assert message.startswith("quality gate FAILED for version v2: ")
    assert "roc_auc 0.5100 < 0.98" in message
    assert "recall 0.40 < 0.95" in message
    assert "the served model stays v1" in message


@pytest.mark.airflow
def test_dag_evaluate_report_url_from_the_connection(report: dict[str, Any]) -> None:
    checks = report["checks"]
    assert checks["report_url"] == "http://api:8000/models/20260101T000000Z-0123abcd/report"
    assert "t0ken" not in checks["report_url"]
    # without the connection (never in a real run: the operator just used it) the line is skipped, no failure
    assert checks["report_url_without_connection"] == {"outcome": "None"}


@pytest.mark.airflow
def test_dag_wrong_token_message_names_the_connection(report: dict[str, Any]) -> None:
    message = report["checks"]["train_401"]["message"]
    assert message.startswith("POST /train failed: HTTP 401: missing or invalid bearer token")
    assert "ml_api" in message
    assert report["checks"]["train_filter"] == {"version": "v2", "unchanged": False}
    assert report["checks"]["train_filter_unchanged"] == {"version": "v1", "unchanged": True}


@pytest.mark.airflow
@pytest.mark.parametrize("status", [422, 502])
def test_dag_source_refused_message_names_data_url_param(report: dict[str, Any], status: int) -> None:
    message = report["checks"][f"train_{status}_data_url_param"]["message"]
    assert message.startswith(f"POST /train failed: HTTP {status}: data source http://x/d.csv answered")
    assert "this run's data_url param http://x/d.csv, not the service's DATA_URL" in message
    assert "data_url param" not in report["checks"][f"train_{status}"]["message"]  # no param, no mention


@pytest.mark.airflow
def test_dag_failure_reasons_name_url_problem_and_timeout(report: dict[str, Any]) -> None:
    reasons = report["checks"]["reasons"]
    assert re.fullmatch(
        r"POST http://127\.0\.0\.1:\d+/train: service unreachable: Connection refused", reasons["refused"]
    )
    assert reasons["read_timeout"] == (
        "POST http://api:8000/train: service unreachable: no answer within the read timeout"
    )
    assert reasons["task_timeout"] == "did not finish within its execution_timeout of 0:35:00"
    assert reasons["multiline"] == "first line"
    assert "see its log" in reasons["none"]
