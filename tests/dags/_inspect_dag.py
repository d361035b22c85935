"""Describe the DAG as JSON; run by the Airflow venv's python (not collected by pytest).

Usage: python _inspect_dag.py <dag_file> <dag_id> <output.json>   (Airflow prints to stdout itself)

1. Imports the DAG module under an audit hook that records I/O (files outside the Python install,
   sockets, subprocesses) done by the module itself at import time.
2. Loads the dags folder with Airflow's own DagBag (import errors, cycle and parameter validation).
3. Dumps the DAG's and every task's settings, and the outcome of the DAG's response checks on
   hand-built `requests.Response` objects (ready / fail fast / retry / quality gate verdicts).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

IO_EVENTS = {"socket.connect", "socket.getaddrinfo", "subprocess.Popen", "os.system", "urllib.Request"}


def _load(dag_file: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, dag_file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_under_audit(dag_file: Path) -> tuple[Any, list[str]]:
    """Import the DAG file twice and audit the second import.

    The first import pulls in every library module the DAG needs (croniter, for one, runs `file` on
    the interpreter when first imported); the second then shows what the DAG file itself does.
    """
    _load(dag_file, "dag_warm_up")
    python_dirs = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    events: list[str] = []
    recording = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if not recording[0]:
            return
        if event in IO_EVENTS:
            events.append(f"{event} {args!r}"[:300])
        elif event == "open" and isinstance(args[0], str):
            path = args[0]
            if path == str(dag_file) or path.endswith((".py", ".pyc", ".so")) or path.startswith(python_dirs):
                return  # the module's own source and lazily imported library modules
            events.append(f"open {path} {args[1]!r}")

    sys.addaudithook(hook)
    module = _load(dag_file, "dag_under_inspection")
    recording[0] = False
    return module, events


def seconds(value: Any) -> float | None:
    return None if value is None else value.total_seconds()


def describe_task(task: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "operator": type(task).__name__,
        "bases": [cls.__name__ for cls in type(task).__mro__],
        "upstream": sorted(task.upstream_task_ids),
        "downstream": sorted(task.downstream_task_ids),
        "trigger_rule": str(getattr(task.trigger_rule, "value", task.trigger_rule)),
        "retries": task.retries,
        "retry_delay": seconds(task.retry_delay),
        "execution_timeout": seconds(task.execution_timeout),
    }
    for name in ("http_conn_id", "endpoint", "method", "deferrable", "log_response", "mode", "silent_fail"):
        if hasattr(task, name):
            info[name] = getattr(task, name)
    if hasattr(task, "extra_options"):
        info["extra_options"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in task.extra_options.items()
        }
    for name in ("response_check", "response_filter", "auth_type"):
        value = getattr(task, name, None)
        if value is not None:
            info[name] = getattr(value, "__name__", repr(value))
    callbacks = task.on_failure_callback or []
    info["on_failure_callback"] = [
        getattr(f, "__name__", repr(f)) for f in (callbacks if isinstance(callbacks, list) else [callbacks])
    ]
    if hasattr(task, "poke_interval"):
        info["poke_interval"] = float(task.poke_interval)
        info["timeout"] = float(task.timeout)
    return info


def run_checks(module: Any) -> dict[str, Any]:
    import requests
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowTaskTimeout
    from requests import Response

    def response(status: int, body: Any) -> Response:
        r = Response()
        r.status_code = status
        r._content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        r.headers["Content-Type"] = "text/html" if isinstance(body, str) else "application/json"
        return r

    def outcome(call: Any) -> dict[str, Any]:
        try:
            result = call()
        except AirflowFailException as exc:
            return {"outcome": "fail", "message": str(exc)}
        except AirflowException as exc:
            return {"outcome": "retry", "message": str(exc)}
        return {"outcome": "ok" if result is True else "false" if result is False else repr(result)}

    gate_failed = {
        "version": "v2",
        "metrics": {"roc_auc": 0.51},
        "gate": {
            "passed": False,
            "checks": [{"name": "roc_auc", "value": 0.51, "limit": 0.98, "passed": False}],
            "reasons": ["roc_auc 0.5100 < 0.98", "recall 0.40 < 0.95"],
        },
        "promoted": False,
        "served_version": "v1",
    }
    gate_passed = {**gate_failed, "gate": {"passed": True, "checks": [], "reasons": []}}
    results: dict[str, Any] = {}
    ready_cases = {
        "200": response(200, {"status": "ready", "model_version": "v1"}),
        "503_no_model": response(503, {"detail": "no model is served yet: train and evaluate one"}),
        "503_other": response(503, {"detail": "service unavailable"}),
        "502_proxy_html": response(502, "<html>Bad Gateway</html>"),
        "404": response(404, {"detail": "Not Found"}),
        "401": response(401, {"detail": "missing bearer token"}),
    }
    for name, resp in ready_cases.items():
        results[f"ready_{name}"] = outcome(lambda resp=resp: module.check_ready(resp))
    train_cases = {
        "200": response(200, {"version": "v2", "data_sha256": "ab", "rows": {"raw": 699}}),
        "200_without_version": response(200, {"rows": {}}),
        "401": response(401, {"detail": "missing or invalid bearer token"}),
        "403": response(403, {"detail": "forbidden"}),
        "422": response(422, {"detail": "Class column missing"}),
        "409": response(409, {"detail": "training already running"}),
        "500": response(500, {"detail": "boom"}),
        "502": response(502, {"detail": "data source unreachable"}),
    }
    for name, resp in train_cases.items():
        results[f"train_{name}"] = outcome(lambda resp=resp: module.check_train(resp, {"data_url": None}))
    for status in (422, 502):
        resp = response(status, {"detail": "data source http://x/d.csv answered HTTP 404"})
        params = {"data_url": "http://x/d.csv"}
        results[f"train_{status}_data_url_param"] = outcome(
            lambda resp=resp, params=params: module.check_train(resp, params)
        )
    results["train_filter"] = module.trained_version(train_cases["200"])
    results["train_filter_unchanged"] = module.trained_version(
        response(200, {"version": "v1", "unchanged": True, "rows": {}})
    )
    evaluate_cases = {
        "passed_promoted": (
            response(200, {**gate_passed, "promoted": True, "served_version": "v2"}),
            {"promote": True},
        ),
        "passed_not_promoted": (response(200, gate_passed), {"promote": True}),
        "passed_promote_false": (response(200, gate_passed), {"promote": False}),
        "gate_failed": (response(200, gate_failed), {"promote": True}),
        "404": (response(404, {"detail": "unknown version"}), {"promote": True}),
    }
    for name, (resp, params) in evaluate_cases.items():
        results[f"evaluate_{name}"] = outcome(
            lambda resp=resp, params=params: module.check_evaluate(resp, params)
        )
    upload_cases = {
        "200": response(200, {"version": "v2", "backup_dir": "/b", "drive": {"status": "skipped"}}),
        "502_drive": response(502, {"detail": "Drive upload failed at step create; local backup at /b"}),
    }
    for name, resp in upload_cases.items():
        results[f"upload_{name}"] = outcome(lambda resp=resp: module.check_upload(resp))
    results["reasons"] = failure_reasons(module, requests, AirflowTaskTimeout)
    results["report_url_without_connection"] = outcome(lambda: module.log_report_url("v2"))
    # the connection a deployment defines (docker-compose: the api service on port 8000)
    os.environ["AIRFLOW_CONN_ML_API"] = json.dumps(
        {"conn_type": "http", "host": "api", "port": 8000, "schema": "http", "password": "t0ken"}
    )
    try:
        results["report_url"] = module.report_url("20260101T000000Z-0123abcd")
    finally:
        del os.environ["AIRFLOW_CONN_ML_API"]
    return results


def failure_reasons(module: Any, requests: Any, task_timeout: type[BaseException]) -> dict[str, str]:
    """What ``on_failure`` says for exceptions the tasks really fail with (real requests errors)."""
    import datetime
    import socket
    import types

    task = types.SimpleNamespace(
        endpoint="/train", method="POST", execution_timeout=datetime.timedelta(minutes=35)
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once the socket is closed
    errors: dict[str, BaseException | None] = {"none": None, "task_timeout": task_timeout()}
    try:
        requests.post(f"http://127.0.0.1:{closed}/train", timeout=(2, 2))
    except requests.RequestException as exc:
        errors["refused"] = exc
    request = requests.Request("POST", "http://api:8000/train").prepare()
    errors["read_timeout"] = requests.ReadTimeout("read timed out", request=request)
    errors["multiline"] = ValueError("first line\nsecond line")
    return {name: module.failure_reason(exc, task) for name, exc in errors.items()}


def main() -> None:
    dag_file, dag_id = Path(sys.argv[1]), sys.argv[2]
    module, io_events = import_under_audit(dag_file)
    project_modules = sorted(m for m in sys.modules if m.split(".")[0] in {"app", "etl"})

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dag_file.parent))
    dag = bag.dags.get(dag_id)
    report: dict[str, Any] = {
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "dag_ids": sorted(bag.dags),
        "io_at_import": io_events,
        "project_modules": project_modules,
        "checks": run_checks(module),
    }
    if dag is not None:
        report["dag"] = {
            "schedule": dag.schedule if isinstance(dag.schedule, str | None) else repr(dag.schedule),
            "timetable": type(dag.timetable).__name__,
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "tags": sorted(dag.tags),
            "start_date": dag.start_date.isoformat() if dag.start_date else None,
            "doc_md": dag.doc_md,
            "params": {k: dag.params.get_param(k).dump() for k in dag.params},
            "tasks": {task.task_id: describe_task(task) for task in dag.tasks},
        }
    Path(sys.argv[3]).write_text(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
