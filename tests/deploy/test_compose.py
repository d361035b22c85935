"""docker-compose.yml, .env.example and `make secrets`, proven without a Docker engine.

`docker-compose config` (v1, Debian package) renders the compose file with `.env.example` (refused: its
secrets are empty) and with a `.env` written by `docker/stack_env.py write` (what `make secrets` runs); the
checks below read the rendered file. The stack's `preflight` service runs `docker/stack_env.py check` in a
bare python image: here it runs with the environment the rendered file gives that service.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.monitoring import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    PROMETHEUS_CONFIG,
    ROOT,
    load_yaml,
    require_tool,
)

STACK_ENV = ROOT / "docker" / "stack_env.py"
SECRETS = frozenset(
    {
        "API_TOKEN",
        "POSTGRES_PASSWORD",
        "PREDICTION_DB_PASSWORD",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_API_SECRET_KEY",
        "AIRFLOW_ADMIN_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "GRAFANA_SECRET_KEY",
        "MODEL_SIGNING_KEY",
        "REGISTRY_DB_PASSWORD",
    }
)
SERVICES = {
    "preflight",
    "api",
    "postgres",
    "databases",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "statsd-exporter",
    "prometheus",
    "grafana",
}
AIRFLOW = sorted(name for name in SERVICES if name.startswith("airflow-"))
PUBLISHED = {"api": 8000, "airflow-apiserver": 8080, "prometheus": 9090, "grafana": 3000}


def read_env(path: Path, *, commented: bool = False) -> dict[str, str]:
    """KEY=VALUE lines of an env file; with ``commented`` also the documented defaults ``# KEY=VALUE``."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if commented and re.fullmatch(r"# [A-Z][A-Z0-9_]*=.*", line):
            line = line[2:]
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def stack_env(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STACK_ENV), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def write_env(folder: Path) -> Path:
    """What `make secrets` does, into ``folder``/.env."""
    env = folder / ".env"
    proc = stack_env("write", "--env", str(env), "--example", str(ENV_EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    return env


def compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` on the project with ``env`` as its .env file (none of our environment)."""
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    clean = {key: value for key, value in os.environ.items() if key in {"PATH", "HOME", "LANG"}}
    return subprocess.run(
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
        capture_output=True,
        text=True,
        timeout=120,
    )


def rendered(tmp_path: Path, **overrides: str) -> dict[str, Any]:
    """The compose file rendered with a generated .env (plus ``overrides``): its ``services``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    values = {**read_env(write_env(tmp_path)), **overrides}
    result = compose_config(tmp_path, values)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


def published(service: dict[str, Any]) -> set[tuple[str, int]]:
    """(host address, host port) of each published port; docker-compose v1 renders strings or mappings."""
    ports = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.add((port.get("host_ip", "0.0.0.0"), int(port["published"])))
        else:
            parts = str(port).split("/")[0].split(":")
            host = parts[0] if len(parts) == 3 else "0.0.0.0"
            ports.add((host, int(parts[-2])))
    return ports


def preflight(service: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """The preflight service's command, run here with the environment the rendered file gives it."""
    assert service["command"] == ["python", "/stack_env.py", "check"]
    assert f"{STACK_ENV}:/stack_env.py:ro" in service["volumes"]
    env = {"PATH": os.environ["PATH"], **{k: str(v) for k, v in service["environment"].items()}}
    return subprocess.run(
        [sys.executable, str(STACK_ENV), "check"], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def services(tmp_path: Path) -> dict[str, Any]:
    return rendered(tmp_path)


# --- .env.example and make secrets ----------------------------------------------------------------


@pytest.mark.tools
def test_compose_env_example_refused_naming_missing_secret(tmp_path: Path) -> None:
    example = read_env(ENV_EXAMPLE)
    assert {name: example[name] for name in SECRETS} == dict.fromkeys(SECRETS, "")  # no placeholder to accept
    result = compose_config(tmp_path, example)
    assert result.returncode != 0
    pattern = r"\b(" + "|".join(sorted(SECRETS)) + r") is not set; run make secrets"
    assert re.search(pattern, result.stderr), result.stderr


def test_compose_env_example_does_not_switch_production_off() -> None:
    example = read_env(ENV_EXAMPLE)
    assert "ENVIRONMENT" not in example and "WORKERS" not in example  # documented as comments only
    commented = read_env(ENV_EXAMPLE, commented=True)
    assert {"ENVIRONMENT", "WORKERS"} <= set(commented)


def test_make_secrets_writes_every_secret_in_one_line_without_printing_them(tmp_path: Path) -> None:
    proc = stack_env("write", "--env", str(tmp_path / ".env"), "--example", str(ENV_EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout
    env = tmp_path / ".env"
    assert env.stat().st_mode & 0o777 == 0o600
    values = read_env(env)
    for name in SECRETS:
        assert len(values[name]) >= 32, name
        assert values[name] not in proc.stdout + proc.stderr, name
    assert len({values[name] for name in SECRETS}) == len(SECRETS)  # each generated on its own
    assert len(base64.urlsafe_b64decode(values["AIRFLOW_FERNET_KEY"])) == 32
    # everything else is .env.example's
    assert {k: v for k, v in values.items() if k not in SECRETS | {"APP_UID", "APP_GID", "AIRFLOW_UID"}} == {
        k: v
        for k, v in read_env(ENV_EXAMPLE).items()
        if k not in SECRETS | {"APP_UID", "APP_GID", "AIRFLOW_UID"}
    }
    assert all((tmp_path / folder).is_dir() for folder in ("data", "results", "upload"))


def test_make_secrets_keeps_an_existing_env_without_force(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("LOG_LEVEL=DEBUG\nAPI_TOKEN=change-me-token\n")
    before = env.read_text()
    proc = stack_env("write", "--env", str(env), "--example", str(ENV_EXAMPLE))
    assert proc.returncode == 1
    assert env.read_text() == before
    assert "FORCE=1" in proc.stderr and "API_TOKEN is a placeholder" in proc.stderr
    assert "change-me-token" not in proc.stdout + proc.stderr


def test_make_secrets_force_replaces_only_unusable_secrets(tmp_path: Path) -> None:
    env = write_env(tmp_path)
    good = read_env(env)
    text = env.read_text().replace(
        f"POSTGRES_PASSWORD={good['POSTGRES_PASSWORD']}", "POSTGRES_PASSWORD=changeme"
    )
    env.write_text(text + "LOG_LEVEL=DEBUG\n")
    proc = stack_env("write", "--force", "--env", str(env), "--example", str(ENV_EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    after = read_env(env)
    assert after["POSTGRES_PASSWORD"] not in {"changeme", good["POSTGRES_PASSWORD"]}
    assert {k: v for k, v in after.items() if k != "POSTGRES_PASSWORD"} == {
        **{k: v for k, v in good.items() if k != "POSTGRES_PASSWORD"},
        "LOG_LEVEL": "DEBUG",
    }
    assert "POSTGRES_PASSWORD=changeme" in (tmp_path / ".env.bak").read_text()


# --- the rendered stack ---------------------------------------------------------------------------


@pytest.mark.tools
def test_compose_generated_env_renders_every_service(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES


@pytest.mark.tools
def test_compose_api_runs_in_production_with_two_workers(services: dict[str, Any], tmp_path: Path) -> None:
    api = services["api"]["environment"]
    assert (api["ENVIRONMENT"], str(api["WORKERS"])) == ("production", "2")
    other = rendered(tmp_path / "other", WORKERS="3", ENVIRONMENT="development")["api"]["environment"]
    assert (other["ENVIRONMENT"], str(other["WORKERS"])) == ("production", "3")


@pytest.mark.tools
def test_compose_ports_bound_to_loopback_unless_widened(services: dict[str, Any], tmp_path: Path) -> None:
    assert {name: published(service) for name, service in services.items() if service.get("ports")} == {
        name: {("127.0.0.1", port)} for name, port in PUBLISHED.items()
    }
    wide = rendered(tmp_path / "wide", BIND_ADDRESS="0.0.0.0")
    assert {name: published(wide[name]) for name in PUBLISHED} == {
        name: {("0.0.0.0", port)} for name, port in PUBLISHED.items()
    }


@pytest.mark.tools
def test_compose_prometheus_lifecycle_api_off(services: dict[str, Any]) -> None:
    assert not any("enable-lifecycle" in arg for arg in services["prometheus"]["command"])


@pytest.mark.tools
def test_compose_airflow_components_share_secrets_and_connection(services: dict[str, Any]) -> None:
    env = read_env(ENV_EXAMPLE)
    keys = {
        "AIRFLOW__API_AUTH__JWT_SECRET",  # task tokens
        "AIRFLOW__API__SECRET_KEY",  # log requests between components
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW_CONN_ML_API",
    }
    for key in keys:
        values = {services[name]["environment"][key] for name in AIRFLOW}
        assert len(values) == 1 and "" not in values, key
    scheduler = services["airflow-scheduler"]["environment"]
    assert scheduler["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert scheduler["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert scheduler["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter"
    assert (
        scheduler["AIRFLOW__METRICS__STATSD_ON"] == scheduler["AIRFLOW__METRICS__LEGACY_NAMES_ON"] == "true"
    )
    conn = yaml.safe_load(scheduler["AIRFLOW_CONN_ML_API"])
    assert (conn["host"], conn["port"], conn["password"]) == (
        "api",
        8000,
        services["api"]["environment"]["API_TOKEN"],
    )
    assert env["API_TOKEN"] == ""  # the rendered token came from the generated .env


@pytest.mark.tools
def test_compose_airflow_image_built_once_with_constraints(services: dict[str, Any]) -> None:
    builders = sorted(name for name, service in services.items() if "build" in service)
    assert builders == ["airflow-init", "api"]
    assert {services[name]["image"] for name in AIRFLOW} == {"bcd-airflow:3.3.2"}
    build = services["airflow-init"]["build"]
    assert (Path(build["context"]), build["dockerfile"]) == (ROOT, "docker/airflow/Dockerfile")
    dockerfile = (ROOT / "docker" / "airflow" / "Dockerfile").read_text()
    assert "COPY dags/requirements.txt dags/constraints.txt" in dockerfile
    assert re.search(r"pip install .*-r \S+/requirements\.txt -c \S+/constraints\.txt", dockerfile)
    # the constraints were resolved on the Python of .airflow-venv: the image runs the same one
    python = re.search(r"on Python (3\.\d+)", (ROOT / "dags" / "constraints.txt").read_text())
    assert python and f"-python{python.group(1)}" in dockerfile.split("FROM ", 1)[1].split()[0]
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore.index("dags/") < ignore.index("!dags/requirements.txt")
    assert ignore.index("dags/") < ignore.index("!dags/constraints.txt")


@pytest.mark.tools
def test_compose_monitoring_and_scheduler_do_not_wait_for_api(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert "api" not in service.get("depends_on", {}), f"{name} waits for the api"
    assert set(services["prometheus"].get("depends_on", {})) == set()
    assert set(services["grafana"]["depends_on"]) == {"preflight", "prometheus"}


@pytest.mark.tools
def test_compose_dependants_wait_for_healthy_or_completed_services(services: dict[str, Any]) -> None:
    one_shot = {"preflight", "databases", "airflow-init"}
    for name, service in services.items():
        if name not in one_shot:
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, rule in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in one_shot else "service_healthy"
            assert rule["condition"] == expected, f"{name} -> {dependency}"


@pytest.mark.tools
def test_compose_every_service_with_a_secret_waits_for_preflight(services: dict[str, Any]) -> None:
    checked = set(services["preflight"]["environment"])
    assert checked == set(SECRETS)
    text = COMPOSE_FILE.read_text()
    for name in SECRETS:
        assert f"${{{name}:?{name} is not set; run make secrets}}" in text, name
    secrets = {services["preflight"]["environment"][name] for name in SECRETS}
    for name, service in services.items():
        flat = yaml.safe_dump(service.get("environment", {}))
        if name != "preflight" and any(secret in flat for secret in secrets):
            condition = service.get("depends_on", {}).get("preflight", {}).get("condition")
            assert condition == "service_completed_successfully", name


@pytest.mark.tools
def test_compose_preflight_accepts_generated_secrets(services: dict[str, Any]) -> None:
    proc = preflight(services["preflight"])
    assert proc.returncode == 0, proc.stderr
    assert services["preflight"]["network_mode"] == "none"


@pytest.mark.tools
@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("POSTGRES_PASSWORD", "change-me-postgres-password", "is a placeholder"),
        ("POSTGRES_PASSWORD", "p@ss/word-9a8b7c6d5e4f", "may only contain"),
        ("AIRFLOW_FERNET_KEY", "change-me-fernet-key", "is a placeholder"),
        ("AIRFLOW_FERNET_KEY", base64.urlsafe_b64encode(b"k" * 16).decode(), "is not a Fernet key"),
        # standard base64 ("+", "/") instead of the url-safe alphabet
        (
            "AIRFLOW_FERNET_KEY",
            base64.b64encode(b"\xfb\xef\xbe" * 10 + b"\xfb\xef").decode(),
            "is not a Fernet key",
        ),
        ("API_TOKEN", "short-6e5d", "too short"),
        ("API_TOKEN", "aaaaaaaaaaaaaaaaaaaaaaaa", "too repetitive"),
        ("AIRFLOW_JWT_SECRET", "changeme-jwt-secret-0123", "is a placeholder"),
        ("GRAFANA_ADMIN_PASSWORD", "CHANGE-ME-grafana-pw", "is a placeholder"),
    ],
)
def test_compose_preflight_refuses_unusable_secret_naming_it(
    tmp_path: Path, name: str, value: str, rule: str
) -> None:
    services = rendered(tmp_path, **{name: value})
    proc = preflight(services["preflight"])
    assert proc.returncode == 1
    assert re.search(rf"^  {name} .*{re.escape(rule)}", proc.stderr, re.M), proc.stderr
    assert value not in proc.stdout + proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("  ")]) == 1  # only that one


@pytest.mark.tools
def test_compose_api_mounts_secrets_folder_not_key_file(services: dict[str, Any]) -> None:
    volumes = services["api"]["volumes"]
    assert f"{ROOT / 'secrets'}:/app/secrets:ro" in volumes
    assert not any("drive_sa.json" in volume for volume in volumes)
    assert services["api"]["environment"]["GOOGLE_APPLICATION_CREDENTIALS"] == "/app/secrets/drive_sa.json"
    for folder in ("data", "results", "upload"):
        assert f"{ROOT / folder}:/app/{folder}:rw" in volumes


@pytest.mark.tools
def test_compose_api_user_is_app_uid(tmp_path: Path) -> None:
    assert rendered(tmp_path, APP_UID="1234", APP_GID="5678")["api"]["user"] == "1234:5678"


@pytest.mark.tools
def test_compose_mounts_configs_read_only(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]["volumes"]
    assert f"{ROOT}/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus
    assert f"{ROOT}/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus
    assert any("statsd-mapping.yml" in volume for volume in services["statsd-exporter"]["volumes"])
    assert f"{ROOT}/dags:/opt/airflow/dags:ro" in services["airflow-scheduler"]["volumes"]
    prometheus_targets = {
        target
        for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert {"api:8000", "statsd-exporter:9102", "localhost:9090"} == prometheus_targets


def test_compose_images_pinned() -> None:
    images = re.findall(r"^\s*image:\s*(\S+)", COMPOSE_FILE.read_text(), re.M)
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), f"unpinned image {image}"


def test_compose_env_example_lists_every_variable() -> None:
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    missing = used - set(read_env(ENV_EXAMPLE, commented=True))
    assert not missing, f".env.example does not list {sorted(missing)}"


# --- the prediction record's database ------------------------------------------------------------------


@pytest.mark.tools
def test_compose_api_records_predictions_in_its_own_postgres_database(services: dict[str, Any]) -> None:
    password = services["preflight"]["environment"]["PREDICTION_DB_PASSWORD"]
    assert password != services["preflight"]["environment"]["POSTGRES_PASSWORD"]
    api = services["api"]["environment"]
    assert api["PREDICTION_DB_URL"] == f"postgresql://predictions:{password}@postgres:5432/predictions"
    assert api["PREDICTION_LOG"] == "async"
    # made by the one-shot `databases` service (docker/postgres/create_databases.sh; test_databases.py)
    databases = services["databases"]
    assert "predictions:PREDICTION_DB_PASSWORD" in databases["command"]
    assert databases["environment"]["PREDICTION_DB_PASSWORD"] == password
    # the api does not wait for the database's health: answers are queued until it can be written
    assert "postgres" not in services["api"].get("depends_on", {})
