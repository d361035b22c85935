"""
### Breast-cancer model retraining

Drives one retraining cycle **through the model service's HTTP API**: the DAG holds no ML code and
imports nothing from the project, so any Airflow 3 with `apache-airflow-providers-http` can run it.

1. `wait_for_api`: `GET /ready` until the service answers; keeps poking through *connection refused*
   and 5xx while the service starts (one log line per poke), until the sensor timeout, then fails with
   the URL, how long it waited and the last problem.
2. `train`: `POST /train` (optional `data_url` Param); pushes the version to XCom. Retried on
   5xx, 409 (training already running) and timeouts; a 4xx such as **401** (wrong token) fails at once.
   `new_version`: when the service answers `"unchanged": true` (the same data, settings and libraries as
   an existing version), logs `data unchanged since version X` and skips the rest: the run succeeds.
3. `evaluate`: `POST /evaluate` for that version (`promote` Param). **A failed quality gate fails this
   task without a retry** (it is a verdict, not a fault), with the gate's reasons in the task log; the
   served model stays. Either way the task logs the URL of the version's evaluation report
   (`GET /models/<version>/report` on the `ml_api` connection's host), the page people read.
4. `upload`: `POST /upload` for that version (local backup + Google Drive); retried, as a Drive outage
   is transient.
5. `on_failure`: runs when any task failed (`one_failed`), logs which task failed and why (every task
   records its reason when it fails: the service unreachable at a URL, an HTTP status and the service's
   detail, a timeout), calls the optional notification hook and fails itself, so the run ends failed
   (it is skipped on success).

**Connection** `ml_api` (`AIRFLOW_CONN_ML_API`), e.g.
`{"conn_type": "http", "host": "127.0.0.1", "port": 8000, "schema": "http", "password": "<API_TOKEN>"}`;
the password is sent as `Authorization: Bearer <password>` (no header when it is empty).

**Params**: `data_url` (optional CSV URL overriding the service's `DATA_URL`), `promote` (default true),
`force` (default false: train even when nothing changed since an existing version).

**Environment** (read when the file is parsed; no I/O): `ML_PIPELINE_SCHEDULE` (default `@weekly`;
`None` for manual runs only), `ML_PIPELINE_RETRY_DELAY_SECONDS` (300), `ML_PIPELINE_POKE_INTERVAL_SECONDS`
(15), `ML_PIPELINE_WAIT_TIMEOUT_SECONDS` (900), `ML_PIPELINE_ALERT_CONN_ID` (empty: no notification; else an
HTTP connection that receives a JSON summary of a failed run). For a quick `airflow dags test`, set
`ML_PIPELINE_RETRY_DELAY_SECONDS=5` and `ML_PIPELINE_WAIT_TIMEOUT_SECONDS=60`: while a task waits for its
retry, `dags test` logs "No tasks to run. unrunnable tasks" once a second.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from datetime import datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import quote

import requests
from airflow.providers.http.hooks.http import HttpHook
from airflow.providers.http.notifications.http import HttpNotifier
from airflow.providers.http.operators.http import HttpOperator
from airflow.providers.http.sensors.http import HttpSensor
from airflow.sdk import DAG, BaseHook, Param, TriggerRule, task
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowTaskTimeout,
)
from requests import Response
from requests.auth import AuthBase

log = logging.getLogger(__name__)

DAG_ID = "breast_cancer_pipeline"
ML_API_CONN_ID = "ml_api"
FAILURE_XCOM_KEY = "failure_reason"

# HTTP statuses worth another attempt: the service is busy (409 training already running), overloaded
# or could not reach its own data source / Google Drive (5xx). Any other 4xx is a fault of the request
# or the configuration (wrong token, bad data) that a retry cannot fix.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def _schedule_from_env() -> str | None:
    value = os.environ.get("ML_PIPELINE_SCHEDULE", "@weekly").strip()
    return None if value.lower() in {"", "none"} else value


RETRY_DELAY = timedelta(seconds=_env_seconds("ML_PIPELINE_RETRY_DELAY_SECONDS", 300))
POKE_INTERVAL = timedelta(seconds=_env_seconds("ML_PIPELINE_POKE_INTERVAL_SECONDS", 15))
WAIT_TIMEOUT = timedelta(seconds=_env_seconds("ML_PIPELINE_WAIT_TIMEOUT_SECONDS", 900))
ALERT_CONN_ID = os.environ.get("ML_PIPELINE_ALERT_CONN_ID", "").strip()

# requests timeouts: (connect, read) seconds. Training and a Drive upload with its own retries are slow.
CONNECT_TIMEOUT = 10
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class BearerTokenAuth(AuthBase):
    """`Authorization: Bearer <password of the ml_api connection>`; no header when the password is empty.

    HttpHook builds ``auth_type(login, password)`` when the connection has a login and ``auth_type()``
    otherwise, so without a login the token is read from the connection here, at request time.
    """

    def __init__(self, login: str | None = None, password: str | None = None) -> None:
        if password is None:
            password = BaseHook.get_connection(ML_API_CONN_ID).password
        self._token = password or ""

    def __call__(self, request: Any) -> Any:
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        return request


def _detail(response: Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return json.dumps(body)[:500]


def _fail(message: str, *, retry: bool) -> NoReturn:
    """Fail the task with ``message`` (which ``on_failure`` reports); ``retry=False`` skips retries."""
    if retry:
        raise AirflowException(message)
    raise AirflowFailException(message)


def network_problem(exc: requests.RequestException) -> str:
    """What went wrong below HTTP, in a few words (requests' own message is a nested repr of objects)."""
    if isinstance(exc, requests.ConnectTimeout):
        return "no connection within the connect timeout"
    if isinstance(exc, requests.ReadTimeout):
        return "no answer within the read timeout"
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    if errno:
        return errno.group(1).strip()
    if "RemoteDisconnected" in str(exc):
        return "the connection was closed without a response"
    return type(exc).__name__


def failure_reason(exc: BaseException | None, task: Any) -> str:
    """One line saying why ``task`` failed, from the exception it failed with."""
    if exc is None:
        return "it ended failed without an error (killed from outside?): see its log"
    if isinstance(exc, requests.RequestException):
        request = getattr(exc, "request", None)
        url = getattr(request, "url", None) or getattr(task, "endpoint", "?")
        method = getattr(request, "method", None) or getattr(task, "method", "")
        return f"{method} {url}: service unreachable: {network_problem(exc)}"
    if isinstance(exc, AirflowTaskTimeout):
        return f"did not finish within its execution_timeout of {task.execution_timeout}"
    lines = str(exc).strip().splitlines()
    return lines[0][:1000] if lines else type(exc).__name__


def record_failure(context: Any) -> None:
    """``on_failure_callback`` of every task: keep the reason for ``on_failure``.

    It runs in the task's process before the task is marked failed, so the reason is there when
    ``on_failure`` starts.
    """
    reason = failure_reason(context.get("exception"), context["task"])
    context["ti"].xcom_push(key=FAILURE_XCOM_KEY, value=reason)


def _require_success(response: Response, action: str, source_param: str | None = None) -> dict[str, Any]:
    """Return the JSON body of a 2xx response; fail fast on a 4xx, retryably on 5xx and busy statuses.

    ``source_param``: the run's ``data_url`` param, named in the message when the source was refused.
    """
    status = response.status_code
    if 200 <= status < 300:
        try:
            body = response.json()
        except ValueError:
            _fail(f"{action}: HTTP {status} but the body is not JSON: {response.text[:200]}", retry=True)
        if not isinstance(body, dict):
            _fail(f"{action}: HTTP {status} but the body is not a JSON object", retry=True)
        return body
    message = f"{action} failed: HTTP {status}: {_detail(response)}"
    if status in (401, 403):
        message += " (check the password = API token of the ml_api connection)"
    if source_param and status in (422, 502):
        message += (
            f" (the source was this run's data_url param {source_param}, not the service's DATA_URL: "
            "fix the param, or trigger without it)"
        )
    _fail(message, retry=status >= 500 or status in RETRYABLE_STATUSES)


def check_ready(response: Response) -> bool:
    """`wait_for_api`: True when the service answers; False (keep poking) while it is starting.

    A 503 whose JSON detail says no model is served comes from the service itself: it is up and a
    training run is exactly what it needs. Any other 5xx or 404 (a proxy in front of a starting
    container) means "not yet"; other 4xx are configuration errors and fail the sensor.
    """
    status = response.status_code
    if status == 200:
        log.info("service ready: %s", response.text[:200])
        return True
    if status == 503 and "no model" in _detail(response).lower():
        log.info("service is up without a served model (%s); training will create one", _detail(response))
        return True
    if status >= 500 or status == 404:
        log.info("service not ready yet: HTTP %s %s", status, _detail(response))
        return False
    raise AirflowFailException(f"GET /ready answered HTTP {status}: {_detail(response)}")


class ServiceReadySensor(HttpSensor):
    """HttpSensor for `wait_for_api`: one log line per poke, and a timeout that says why.

    HttpSensor with ``silent_fail`` logs a ~80-line traceback for every refused connection, after
    HttpHook's own "Tenacity will retry" warning (providers-http 6.3.0: ``HttpHook.run_and_check``; no
    retry follows). This sensor makes the request with the hook's session itself, so a connection error
    or timeout is one line and means "not yet"; an HTTP answer goes to ``response_check``.
    """

    def execute(self, context: Any) -> Any:
        self._url = self.endpoint
        self._pokes = 0
        self._last = "no answer yet"
        self._unreachable = True
        self._started = time.monotonic()
        try:
            return super().execute(context)
        except AirflowSensorTimeout:
            waited = f"{time.monotonic() - self._started:.0f} s"
            url = self._url
            state = f"unreachable at {url} for" if self._unreachable else f"at {url} not ready after"
            raise AirflowSensorTimeout(
                f"service {state} {waited} ({self._pokes} pokes; last: {self._last})"
            ) from None

    def poke(self, context: Any) -> bool:
        hook = HttpHook(method=self.method, http_conn_id=self.http_conn_id)
        session = hook.get_conn(self.headers, self.extra_options)  # sets base_url and merged_extra
        self._url = hook.url_from_endpoint(self.endpoint)
        self._pokes += 1
        try:
            response = session.request(
                self.method,
                self._url,
                timeout=hook.merged_extra.get("timeout"),
                allow_redirects=hook.merged_extra.get("allow_redirects", True),
            )
        except requests.RequestException as exc:
            self._unreachable, self._last = True, network_problem(exc)
            self.log.info(
                "%s %s: %s (poke %d, %.0f s of %.0f s)",
                self.method,
                self._url,
                self._last,
                self._pokes,
                time.monotonic() - self._started,
                self.timeout,
            )
            return False
        self._unreachable, self._last = False, f"HTTP {response.status_code} {_detail(response)[:200]}"
        return bool(self.response_check(response)) if self.response_check else True


def check_train(response: Response, params: dict[str, Any]) -> bool:
    body = _require_success(response, "POST /train", params.get("data_url"))
    if not body.get("version"):
        _fail(f"POST /train: no version in the response: {body}", retry=False)
    log.info(
        "trained version %s (data %s, rows %s)", body["version"], body.get("data_sha256"), body.get("rows")
    )
    return True


def trained_version(response: Response) -> dict[str, Any]:
    """XCom value of `train` (return_value): the version, and whether it was unchanged (an existing one)."""
    body = response.json()
    return {"version": str(body["version"]), "unchanged": bool(body.get("unchanged"))}


@task.short_circuit(task_id="new_version")
def new_version(**context: Any) -> bool:
    """Skip evaluate and upload (the run still succeeds) when the service trained nothing new: the same
    data, settings and libraries as an existing version."""
    trained = context["ti"].xcom_pull(task_ids="train")
    if trained.get("unchanged"):
        log.info("data unchanged since version %s: nothing to evaluate or upload", trained["version"])
        return False
    log.info("new version %s: evaluate it", trained["version"])
    return True


def report_url(version: str) -> str:
    """The URL of a version's evaluation report on the service, built from the ml_api connection."""
    hook = HttpHook(method="GET", http_conn_id=ML_API_CONN_ID)
    return hook.url_from_endpoint(f"/models/{quote(version, safe='')}/report")


def log_report_url(version: str) -> None:
    """One log line with the report's URL; never fails the task (the verdict is what the task is about)."""
    try:
        url = report_url(version)
    except (AirflowException, ValueError) as exc:
        log.warning(
            "evaluation report of %s: its URL could not be built from %s: %s", version, ML_API_CONN_ID, exc
        )
        return
    log.info("evaluation report of %s: %s", version, url)


def check_evaluate(response: Response, params: dict[str, Any]) -> bool:
    body = _require_success(response, "POST /evaluate")
    version = body.get("version")
    gate = body.get("gate") or {}
    if version:
        log_report_url(str(version))
    if not gate.get("passed"):
        reasons = [str(r) for r in gate.get("reasons") or []] or [
            f"{c.get('name')}={c.get('value')} (limit {c.get('limit')})"
            for c in gate.get("checks", [])
            if not c.get("passed")
        ]
        served = body.get("served_version")
        stays = f"the served model stays {served}" if served else "no model is served"
        _fail(
            f"quality gate FAILED for version {version}: {'; '.join(reasons) or 'no reason given'}; "
            f"not promoted, {stays}",
            retry=False,
        )
    log.info("quality gate passed for %s: %s", version, gate.get("checks"))
    if params.get("promote", True):
        if not body.get("promoted") or body.get("served_version") != version:
            _fail(
                f"gate passed but {version} was not promoted (served: {body.get('served_version')})",
                retry=True,
            )
        log.info("promoted %s: the service now serves it", version)
    else:
        log.info("promote=false: %s evaluated, served model stays %s", version, body.get("served_version"))
    return True


def check_upload(response: Response) -> bool:
    body = _require_success(response, "POST /upload")
    drive = body.get("drive") or {}
    log.info(
        "uploaded %s: local backup %s; Drive %s%s",
        body.get("version"),
        body.get("backup_dir"),
        drive.get("status"),
        f" ({drive.get('reason')})" if drive.get("reason") else "",
    )
    return True


@task(
    task_id="on_failure",
    trigger_rule=TriggerRule.ONE_FAILED,
    retries=0,
    execution_timeout=timedelta(minutes=2),
)
def report_failure(**context: Any) -> None:
    """Log which task failed and why, call the optional notification hook, then fail.

    This task is downstream of every other task, so it is the DAG's only leaf: it must fail itself for
    the run to end failed (the "watcher" pattern). On a successful run it is skipped.
    """
    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
    failed = sorted(t for t, state in states.items() if state == "failed" and t != ti.task_id)
    reasons = {
        task_id: ti.xcom_pull(task_ids=task_id, key=FAILURE_XCOM_KEY) or "no reason recorded: see its log"
        for task_id in failed
    }
    for task_id, reason in reasons.items():
        log.error("task %s failed: %s", task_id, reason)
    summary = {"dag_id": ti.dag_id, "run_id": ti.run_id, "failed_tasks": reasons}
    if ALERT_CONN_ID:
        HttpNotifier(http_conn_id=ALERT_CONN_ID, json=summary, extra_options={"timeout": 10}).notify(context)
        log.info("failure notification sent through connection %s", ALERT_CONN_ID)
    raise AirflowFailException(
        "pipeline run failed: " + "; ".join(f"{task_id}: {reason}" for task_id, reason in reasons.items())
    )


with DAG(
    dag_id=DAG_ID,
    doc_md=__doc__,
    description="Retrain, evaluate (quality gate), promote and back up the model through the service API",
    schedule=_schedule_from_env(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["ml", "breast-cancer", "retraining"],
    params={
        "data_url": Param(
            None,
            type=["null", "string"],
            description="CSV URL to train on instead of the service's DATA_URL (empty: the service's own)",
        ),
        "promote": Param(True, type="boolean", description="Serve the new version if it passes the gate"),
        "force": Param(
            False,
            type="boolean",
            description="Train even when the data, settings and libraries equal an existing version's",
        ),
    },
    default_args={
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": RETRY_DELAY,
        "execution_timeout": timedelta(minutes=10),
        "on_failure_callback": record_failure,
    },
) as dag:
    wait_for_api = ServiceReadySensor(
        task_id="wait_for_api",
        http_conn_id=ML_API_CONN_ID,
        endpoint="/ready",
        method="GET",
        # Every status goes to check_ready; a refused connection or a timeout is "not yet" (the sensor).
        extra_options={"check_response": False, "timeout": (CONNECT_TIMEOUT, 10)},
        response_check=check_ready,
        mode="poke",
        poke_interval=POKE_INTERVAL,
        timeout=WAIT_TIMEOUT,
        deferrable=False,
        execution_timeout=WAIT_TIMEOUT + timedelta(minutes=1),
    )

    train = HttpOperator(
        task_id="train",
        http_conn_id=ML_API_CONN_ID,
        endpoint="/train",
        method="POST",
        auth_type=BearerTokenAuth,
        headers=JSON_HEADERS,
        data='{"data_url": {{ params.data_url | tojson }}, "force": {{ params.force | tojson }}}',
        extra_options={"check_response": False, "timeout": (CONNECT_TIMEOUT, 1800)},
        response_check=check_train,
        response_filter=trained_version,
        log_response=True,
        deferrable=False,  # a POST must not be re-sent by a restarted triggerer
        execution_timeout=timedelta(minutes=35),
    )

    evaluate = HttpOperator(
        task_id="evaluate",
        http_conn_id=ML_API_CONN_ID,
        endpoint="/evaluate",
        method="POST",
        auth_type=BearerTokenAuth,
        headers=JSON_HEADERS,
        data=(
            '{"version": {{ ti.xcom_pull(task_ids="train")["version"] | tojson }}, '
            '"promote": {{ params.promote | tojson }}}'
        ),
        extra_options={"check_response": False, "timeout": (CONNECT_TIMEOUT, 600)},
        response_check=check_evaluate,
        log_response=True,
        deferrable=False,
        execution_timeout=timedelta(minutes=15),
    )

    upload = HttpOperator(
        task_id="upload",
        http_conn_id=ML_API_CONN_ID,
        endpoint="/upload",
        method="POST",
        auth_type=BearerTokenAuth,
        headers=JSON_HEADERS,
        data='{"version": {{ ti.xcom_pull(task_ids="train")["version"] | tojson }}}',
        extra_options={"check_response": False, "timeout": (CONNECT_TIMEOUT, 900)},
        response_check=check_upload,
        log_response=True,
        deferrable=False,
        retries=3,
        execution_timeout=timedelta(minutes=20),
    )

    on_failure = report_failure()

    wait_for_api >> train >> new_version() >> evaluate >> upload
    [wait_for_api, train, evaluate, upload] >> on_failure
