"""A real Prometheus scrapes a real service on loopback, with the project's scrape config and alert rules.

The service is driven with predictions, batches, bad requests, one successful train -> evaluate -> upload
cycle and two trainings that fail (502); then every PromQL expression of the Grafana dashboard and of the
alert rules is run through Prometheus's HTTP API. Airflow's series come from statsd-exporter, which is
not packaged for Debian and so not running here: the scrape config points job "airflow" at a closed
loopback port, its queries are checked for parsing only (their numbers are proven by promtool in
tests/deploy/test_configs.py), and the target being down makes ScrapeTargetDown pending, which gives the
dashboard's alert panel real data.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from etl.features import FEATURES
from tests.conftest import BUNDLED_CSV, Service, start_service, stop_process
from tests.deploy.monitoring import (
    Prometheus,
    Query,
    alert_rules,
    dashboard_queries,
    free_port,
    loopback_config,
    running_prometheus,
    split_condition,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "prometheus-test-token-0123456789"
PREDICTIONS = (
    40  # single predictions; each gets its real outcome through POST /feedback (>= LIVE_MIN_LABELLED)
)
BATCHES = (5, 20, 40)
# one batch of rows spread over the whole file: with the others, >= DRIFT_MIN_PREDICTIONS inputs whose PSI
# stays below FeatureDrift's 0.2 (the file's first few hundred rows alone are a shifted sample: bland
# chromatin was scored differently in the early collection groups)
SPREAD = 300


def _labelled_rows() -> list[tuple[dict[str, int], int]]:
    """Real patients from the bundled CSV (rows with a missing value skipped), by the API's field names,
    with their class."""
    rows = []
    with BUNDLED_CSV.open(newline="") as handle:
        for record in csv.DictReader(handle):
            if all(record[column].isdigit() for _, column, _ in FEATURES):
                rows.append(
                    ({name: int(record[column]) for name, column, _ in FEATURES}, int(record["Class"]))
                )
    return rows


def _rows(count: int) -> list[dict[str, int]]:
    """The first ``count`` complete rows of the bundled CSV."""
    rows = [row for row, _ in _labelled_rows()[:count]]
    assert len(rows) == count, f"the bundled CSV has fewer than {count} complete rows"
    return rows


def _spread_rows(count: int) -> list[dict[str, int]]:
    """``count`` complete rows taken evenly from the whole bundled CSV."""
    rows = [row for row, _ in _labelled_rows()]
    return rows[:: len(rows) // count][:count]


def _wait(prom: Prometheus, promql: str, predicate: Any, what: str, timeout: float = 60.0) -> list[Any]:
    def holds() -> list[Any] | None:
        body = prom.query(promql)
        result: list[Any] = body.get("data", {}).get("result", [])
        return result if body["status"] == "success" and predicate(result) else None

    result: list[Any] = wait_until(holds, timeout, lambda: f"{what}: {promql}\n{prom.log()}", interval=0.2)
    return result


def _scraped_requests(prom: Prometheus, count: int, what: str) -> None:
    """Until a scrape has seen ``count`` requests in all (the test's own, /health left out)."""
    _wait(
        prom,
        'sum(http_requests_total{job="api",handler!="/health"})',
        lambda r: r and float(r[0]["value"][1]) == count,
        f"a scrape that saw {what} ({count} requests)",
    )


def _rules_evaluated_after(prom: Prometheus, moment: float) -> None:
    """Until every rule group has been evaluated after ``moment`` (Unix time), i.e. on the data scraped by
    then; instead of sleeping for a few evaluation intervals."""

    def evaluated() -> bool:
        groups = prom.api("/api/v1/rules")["data"]["groups"]
        return bool(groups) and all(_unix(group["lastEvaluation"]) > moment for group in groups)

    wait_until(evaluated, 60, f"a rule evaluation after {moment}", interval=0.2)


def _unix(rfc3339: str) -> float:
    """Prometheus's nanosecond RFC 3339 time (``2026-01-01T10:00:00.123456789Z``) as Unix seconds."""
    match = re.fullmatch(r"(.*?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert match, rfc3339
    whole, fraction, zone = match.groups()
    offset = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(whole + offset).timestamp() + float("0." + (fraction or "0"))


@dataclass
class Stack:
    service: Service
    prometheus: Prometheus
    traffic: dict[str, int]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("monitoring")
    service = start_service(
        tmp / "svc",
        data_url=str(BUNDLED_CSV),
        token=TOKEN,
        # the failing /train below names a dead loopback port: let an override reach loopback at all
        extra_env={
            "DOWNLOAD_RETRIES": "0",
            "DATA_URL_ALLOWED_HOSTS": "127.0.0.1",
            "DATA_URL_ALLOW_PRIVATE_NETWORKS": "true",
        },
    )
    prom_port = free_port()
    closed_port = free_port()  # nothing listens here: stands in for the absent statsd-exporter
    config = loopback_config(
        {
            "api": service.url.removeprefix("http://"),
            "airflow": f"127.0.0.1:{closed_port}",
            "prometheus": f"127.0.0.1:{prom_port}",
        },
        tmp,
    )
    try:
        with running_prometheus(config, tmp, prom_port) as prom:
            _wait(prom, 'up{job="api"}', lambda r: r and r[0]["value"][1] == "1", "the api target up")
            traffic = _drive(service, prom)
            expected = PREDICTIONS + sum(BATCHES) + SPREAD
            _wait(
                prom,
                'sum(bcd_predictions_total{job="api"})',
                lambda r: r and float(r[0]["value"][1]) == expected,
                f"a scrape that saw all {expected} predictions",
            )
            # the live figures: every single prediction labelled, the drift window past its minimum
            _wait(
                prom,
                'max(bcd_live_labelled_predictions{job="api"})',
                lambda r: r and float(r[0]["value"][1]) == PREDICTIONS,
                "the live window holding every outcome sent",
            )
            _wait(
                prom,
                'count(bcd_feature_drift_psi{job="api"})',
                lambda r: r and r[0]["value"][1] == "9",
                "drift",
            )
            _rules_evaluated_after(prom, time.time())
            yield Stack(service, prom, traffic)
    finally:
        service.stop()


def _drive(service: Service, prom: Prometheus) -> dict[str, int]:
    """Traffic that gives every service panel and alert signal something to show, and never more than
    5% of 5xx in ApiHighErrorRatio's window at any scrape.

    rate() counts only the increases a series shows between two scrapes (a series is born at its first
    value). So every kind of request is made once first and scraped; the predictions then come in rounds,
    each scraped, before the second 502: the ratio's numerator is one increase, its denominator dozens,
    whenever Prometheus evaluates it. Returns the number of responses by status, /health left out.
    """
    counts: dict[str, int] = {}
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def call(method: str, path: str, expected: int, **kwargs: Any) -> dict[str, Any]:
        response = httpx.request(method, service.url + path, timeout=120, **kwargs)
        assert response.status_code == expected, (path, response.status_code, response.text)
        if path != "/health":  # the fixture's readiness probe also calls /health
            counts[str(expected)] = counts.get(str(expected), 0) + 1
        body: dict[str, Any] = response.json()
        return body

    def sent() -> int:
        return sum(counts.values())

    # one full cycle, a batch, a prediction and the bad requests: every series born and scraped
    version = call("POST", "/train", 200, json={}, headers=auth)["version"]
    evaluated = call("POST", "/evaluate", 200, json={"version": version}, headers=auth)
    assert evaluated["gate"]["passed"] and evaluated["promoted"], evaluated
    assert call("POST", "/upload", 200, json={"version": version}, headers=auth)["version"] == version
    labelled = _labelled_rows()[:PREDICTIONS]
    rows = [row for row, _ in labelled]
    ids = [call("POST", "/predict", 200, json=rows[0])["prediction_id"]]
    for size in BATCHES:
        assert (
            len(call("POST", "/predict/batch", 200, json={"instances": _rows(size)})["predictions"]) == size
        )
    spread = call("POST", "/predict/batch", 200, json={"instances": _spread_rows(SPREAD)})
    assert len(spread["predictions"]) == SPREAD
    bad = dict(_rows(1)[0], clump_thickness=11)
    assert "detail" in call("POST", "/predict", 422, json=bad)
    assert "detail" in call("POST", "/predict/batch", 422, json={"instances": []})
    assert call("POST", "/train", 401, json={})["detail"]
    assert "detail" in call(
        "POST", "/evaluate", 404, json={"version": "19990101T000000Z-00000000"}, headers=auth
    )
    assert call("GET", "/health", 200)["status"] == "ok"
    # a training whose data source is unreachable: 502, a failed train step (its series is born at 1)
    dead = f"http://127.0.0.1:{free_port()}/BreastCancer.csv"
    assert "detail" in call("POST", "/train", 502, json={"data_url": dead}, headers=auth)
    _scraped_requests(prom, sent(), "every kind of request and the first 502")
    # the rest of the predictions, in scraped rounds: increases rate() sees
    for start in range(1, PREDICTIONS, 10):
        for row in rows[start : start + 10]:
            answer = call("POST", "/predict", 200, json=row)
            assert answer["model_version"] == version
            ids.append(answer["prediction_id"])
        _scraped_requests(prom, sent(), f"predictions up to {start + 10}")
    # the confirmed diagnoses of the single predictions (their real classes): the live quality
    outcomes = [{"prediction_id": i, "actual_class": cls} for i, (_, cls) in zip(ids, labelled, strict=True)]
    assert len(call("POST", "/feedback", 200, json=outcomes, headers=auth)) == PREDICTIONS
    # the second 502: the one 5xx increase in the window
    assert "detail" in call("POST", "/train", 502, json={"data_url": dead}, headers=auth)
    _scraped_requests(prom, sent(), "the second 502")
    return counts


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def _ids(queries: list[Query]) -> list[str]:
    return [query.source for query in queries]


SERVICE_QUERIES = [query for query in dashboard_queries() if not query.is_airflow]
AIRFLOW_QUERIES = [query for query in dashboard_queries() if query.is_airflow]


def test_prometheus_targets_api_up_airflow_down(stack: Stack) -> None:
    body = stack.prometheus.api("/api/v1/targets")
    assert body["status"] == "success"
    health = {target["labels"]["job"]: target["health"] for target in body["data"]["activeTargets"]}
    assert health == {"api": "up", "prometheus": "up", "airflow": "down"}


@pytest.mark.parametrize("query", SERVICE_QUERIES, ids=_ids(SERVICE_QUERIES))
def test_dashboard_service_query_returns_data(stack: Stack, query: Query) -> None:
    body = stack.prometheus.query(query.promql)
    assert body["status"] == "success", body
    values = _values(body["data"]["result"])
    assert values, f"{query.source}: no data for {query.promql}"
    assert any(math.isfinite(value) for value in values), f"{query.source}: only NaN/Inf {values}"


@pytest.mark.parametrize("query", AIRFLOW_QUERIES, ids=_ids(AIRFLOW_QUERIES))
def test_dashboard_airflow_query_parses_without_exporter(stack: Stack, query: Query) -> None:
    body = stack.prometheus.query(query.promql)
    assert body["status"] == "success", body
    assert body["data"]["result"] == []  # no statsd-exporter here; promtool proves the numbers


def test_dashboard_queries_see_the_driven_traffic(stack: Stack) -> None:
    prom = stack.prometheus
    by_label = {
        s["metric"]["label"]: float(s["value"][1])
        for s in prom.query('sum by (label) (bcd_predictions_total{job="api"})')["data"]["result"]
    }
    assert sum(by_label.values()) == PREDICTIONS + sum(BATCHES) + SPREAD
    assert by_label.get("benign", 0) > 0 and by_label.get("malignant", 0) > 0
    steps = {
        (s["metric"]["step"], s["metric"]["outcome"]): float(s["value"][1])
        for s in prom.query('sum by (step, outcome) (bcd_pipeline_steps_total{job="api"})')["data"]["result"]
    }
    assert steps[("train", "failure")] == 2 and steps[("train", "success")] == 1
    # the caller's 404 on /evaluate is a rejected request, not a failed evaluation
    assert steps[("evaluate", "rejected")] == 1 and steps[("evaluate", "failure")] == 0
    assert steps[("upload", "success")] == 1 and steps[("upload", "failure")] == 0
    statuses = {
        s["metric"]["status"]: int(float(s["value"][1]))
        for s in prom.query('sum by (status) (http_requests_total{job="api",handler!="/health"})')["data"][
            "result"
        ]
    }
    assert statuses == stack.traffic
    assert set(statuses) == {"200", "401", "404", "422", "502"}
    # the 24 h increase() panel sees the steps: their counters exist at 0 before the first run
    outcomes_panel = next(q for q in SERVICE_QUERIES if "'Pipeline step outcomes (24 h)'" in q.source)
    increases = {
        (s["metric"]["step"], s["metric"]["outcome"]): float(s["value"][1])
        for s in prom.query(outcomes_panel.promql)["data"]["result"]
    }
    for step_outcome in [
        ("train", "failure"),
        ("train", "success"),
        ("evaluate", "success"),
        ("upload", "success"),
    ]:
        assert increases[step_outcome] > 0.5, (step_outcome, increases)
    assert increases[("upload", "failure")] == 0
    served_panel = next(q for q in SERVICE_QUERIES if "'Served model version'" in q.source)
    shown = [s["metric"]["version"] for s in prom.query(served_panel.promql)["data"]["result"]]
    assert shown == [httpx.get(stack.service.url + "/models/current", timeout=10).json()["version"]]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_expression_parses_and_signal_has_data(stack: Stack, rule: dict[str, Any]) -> None:
    full = stack.prometheus.query(rule["expr"])
    assert full["status"] == "success", full
    signal, _, _ = split_condition(rule["expr"])
    body = stack.prometheus.query(signal)
    assert body["status"] == "success", body
    values = _values(body["data"]["result"])
    assert values and all(math.isfinite(value) for value in values), f"{rule['alert']}: {signal} -> {values}"


def test_alert_rules_evaluate_healthy_state(stack: Stack) -> None:
    body = stack.prometheus.api("/api/v1/rules")
    rules = {rule["name"]: rule for group in body["data"]["groups"] for rule in group["rules"]}
    assert set(rules) == {rule["alert"] for rule in alert_rules()}
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    states = {name: rule["state"] for name, rule in rules.items()}
    # only the missing statsd-exporter is wrong in this test, and ScrapeTargetDown waits 5 minutes
    assert states.pop("ScrapeTargetDown") == "pending"
    assert set(states.values()) == {"inactive"}, states
    # and the test's own 502s never made ApiHighErrorRatio pending, at any evaluation since the start
    # (ALERTS has a sample for each pending or firing alert at each evaluation)
    ever = stack.prometheus.query('count_over_time(ALERTS{alertname="ApiHighErrorRatio"}[1h])')
    assert ever["status"] == "success" and ever["data"]["result"] == [], ever
    # two 502 among ~60 requests: the 5xx ratio is above zero and below the 5% threshold
    signal, _, _ = split_condition(
        next(r["expr"] for r in alert_rules() if r["alert"] == "ApiHighErrorRatio")
    )
    (ratio,) = _values(stack.prometheus.query(signal)["data"]["result"])
    assert 0 < ratio < 0.05


def _start_app(workdir: Path, workers: int, mp_dir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": str(mp_dir),
        "DATA_URL": str(BUNDLED_CSV),
        "DATA_DIR": str(workdir / "data"),
        "RESULTS_DIR": str(workdir / "results"),
        "UPLOAD_DIR": str(workdir / "upload"),
        "API_TOKEN": TOKEN,
        "MODEL_POLL_SECONDS": "0.2",
    }
    log = workdir / "app.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=workdir, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    return proc, f"http://127.0.0.1:{port}", log


def _scrape(url: str, name: str, labels: str) -> float:
    """Sum of the samples of ``name`` whose label text contains ``labels``, from one /metrics scrape."""
    text = httpx.get(url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _workers_serving(mp_dir: Path, threshold: float) -> set[str]:
    """The worker metric files that hold the served model's threshold (each worker writes its own file when
    it loads a model; bcd_model_info is read at scrape time, not from files). The first model of a fresh
    service is the only one, so its threshold identifies it."""
    from prometheus_client.mmap_dict import MmapedDict

    serving = set()
    for path in mp_dir.glob("gauge_mostrecent_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            name, *_ = json.loads(key)
            if name == "bcd_model_threshold_ratio" and value == threshold:
                serving.add(path.name)
    return serving


def test_metrics_multiworker_counts_every_request(tmp_path: Path) -> None:
    """`python -m app` with WORKERS=2: N requests spread over both workers, one scrape counts exactly N."""
    from prometheus_client.mmap_dict import MmapedDict

    mp_dir = tmp_path / "multiproc"
    mp_dir.mkdir()
    (mp_dir / "counter_999999.db").write_bytes(b"stale")  # a leftover from an earlier run: must be wiped
    proc, url, log = _start_app(tmp_path, workers=2, mp_dir=mp_dir)
    try:

        def answers() -> bool:
            assert proc.poll() is None, log.read_text()
            return httpx.get(url + "/openapi.json", timeout=2).status_code == 200

        wait_until(answers, 60, lambda: f"the service:\n{log.read_text()}", ignore=(httpx.TransportError,))
        auth = {"Authorization": f"Bearer {TOKEN}"}
        trained = httpx.post(url + "/train", json={}, headers=auth, timeout=120).json()
        version, threshold = trained["version"], trained["threshold"]
        assert httpx.post(url + "/evaluate", json={"version": version}, headers=auth, timeout=60).json()[
            "promoted"
        ]
        # the worker that promoted serves it at once; the other picks it up from the registry pointer
        # (MODEL_POLL_SECONDS): wait until each worker's own metrics file says it serves this version
        wait_until(
            lambda: len(_workers_serving(mp_dir, threshold)) == 2,
            60,
            lambda: (
                f"both workers serving {version}: {_workers_serving(mp_dir, threshold)}\n{log.read_text()}"
            ),
            interval=0.1,
        )

        n, per_thread = 48, 4
        rows = _rows(n)
        errors: list[str] = []

        def send(chunk: list[dict[str, int]]) -> None:
            for row in chunk:
                # a new connection per request, so the kernel hands them to either worker
                response = httpx.post(url + "/predict", json=row, timeout=30)
                if response.status_code != 200 or response.json()["model_version"] != version:
                    errors.append(f"{response.status_code} {response.text}")

        threads = [
            threading.Thread(target=send, args=(rows[i : i + per_thread],)) for i in range(0, n, per_thread)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors[:3]

        assert not (mp_dir / "counter_999999.db").exists()
        assert _scrape(url, "http_requests_total", 'handler="/predict"') == n
        assert _scrape(url, "bcd_predictions_total", "") == n
        assert _scrape(url, "bcd_prediction_probability_count", "") == n
        per_worker = {
            path.name: sum(
                value
                for key, value, *_ in MmapedDict.read_all_values_from_file(str(path))
                if json.loads(key)[1] == "bcd_predictions_total"
            )
            for path in mp_dir.glob("counter_*.db")
        }
        served = {name: count for name, count in per_worker.items() if count}
        assert len(served) == 2, f"requests did not reach both workers: {per_worker}"
        assert sum(served.values()) == n
    finally:
        stop_process(proc, timeout=15)
