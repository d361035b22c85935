"""/metrics behind METRICS_TOKEN, scraped by a real Prometheus with the project's config, and bcd_model_info
with one series only (issue 12, finding 8).

Open, /metrics let anyone diff the prediction histogram around another caller's /predict; with
METRICS_TOKEN set it needs ``Authorization: Bearer <METRICS_TOKEN>``, which prometheus/prometheus.yml sends
with the ``authorization`` block it carries commented out. ``bcd_model_info`` kept a series (at 0) for every
version ever served; now it has one series, the served version, with one worker or several.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import Service, start_service
from tests.deploy.monitoring import PROMETHEUS_CONFIG, PROMETHEUS_DIR, free_port, running_prometheus
from tests.hardening.conftest import PREDICT_BODY, TOKEN, start_promoted, train_and_promote, wait_serving

pytestmark = pytest.mark.integration

METRICS_TOKEN = secrets.token_urlsafe(32)
MODEL_INFO = re.compile(r'^bcd_model_info\{version="([^"]*)"\} (\S+)$', re.MULTILINE)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, bundled_csv: Path) -> Iterator[tuple[Service, str]]:
    svc, version = start_promoted(
        tmp_path_factory.mktemp("metrics") / "svc",
        str(bundled_csv),
        extra_env={"METRICS_TOKEN": METRICS_TOKEN},
    )
    try:
        yield svc, version
    finally:
        svc.stop()


def _metrics(svc: Service, headers: object = None) -> httpx.Response:
    return httpx.get(svc.url + "/metrics", headers=headers, timeout=30)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "missing bearer token: send 'Authorization: Bearer <METRICS_TOKEN>'"),
        ({"Authorization": "Bearer not-the-metrics-token"}, "invalid bearer token"),
        ({"Authorization": f"Bearer {TOKEN}"}, "invalid bearer token"),  # API_TOKEN is not METRICS_TOKEN
        ({"Authorization": f"Basic {METRICS_TOKEN}"}, "missing bearer token"),
        (
            [("Authorization", f"Bearer {METRICS_TOKEN}"), ("Authorization", "Bearer x")],
            "2 Authorization headers: send exactly one",
        ),
    ],
    ids=["none", "wrong", "api-token", "basic", "two-headers"],
)
def test_metrics_token_required(service: tuple[Service, str], headers: object, detail: str) -> None:
    svc, _ = service
    r = _metrics(svc, headers)
    assert r.status_code == 401, r.text[:300]
    assert r.json()["detail"].startswith(detail), r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert METRICS_TOKEN not in r.text and "bcd_" not in r.text


def test_metrics_with_token_served(service: tuple[Service, str]) -> None:
    svc, version = service
    assert httpx.post(svc.url + "/predict", json=PREDICT_BODY, timeout=30).status_code == 200
    r = _metrics(svc, {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"].startswith("text/plain")
    assert 'bcd_predictions_total{label="malignant"}' in r.text
    assert MODEL_INFO.findall(r.text) == [(version, "1.0")]


def _config_with_token(tmp: Path, target: str, token_file: Path) -> Path:
    """The real prometheus.yml with its commented ``authorization`` block switched on, targets on loopback."""
    text = PROMETHEUS_CONFIG.read_text()
    block = re.search(
        r"^(\s*)# authorization:\n\1#   type: Bearer\n\1#   credentials_file: \S+\n", text, re.M
    )
    assert block, "prometheus.yml no longer carries the commented authorization block for METRICS_TOKEN"
    indent = block.group(1)
    text = text.replace(
        block.group(0),
        f"{indent}authorization:\n{indent}  type: Bearer\n{indent}  credentials_file: {token_file}\n",
    )
    config = yaml.safe_load(text)
    config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] == "api"]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    for rule_file in config.get("rule_files", []):
        (tmp / rule_file).write_text((PROMETHEUS_DIR / rule_file).read_text())
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.parametrize(("secret", "health"), [(METRICS_TOKEN, "up"), ("not-the-metrics-token", "down")])
def test_metrics_prometheus_sends_token_from_credentials_file(
    service: tuple[Service, str], tmp_path: Path, secret: str, health: str
) -> None:
    svc, version = service
    token_file = tmp_path / "metrics_token"
    token_file.write_text(secret + "\n")  # as `echo ... > file` writes it; Prometheus trims the newline
    port = free_port()
    config = _config_with_token(tmp_path, svc.url.removeprefix("http://"), token_file)
    with running_prometheus(config, tmp_path, port) as prom:
        deadline = time.monotonic() + 60
        target: dict[str, object] = {}
        while time.monotonic() < deadline:
            targets = prom.api("/api/v1/targets")["data"]["activeTargets"]
            target = targets[0] if targets else {}
            if target.get("health") in ("up", "down"):
                break
            time.sleep(0.2)
        assert target.get("health") == health, target
        if health == "up":
            result = prom.query('bcd_model_info{job="api"}')["data"]["result"]
            deadline = time.monotonic() + 30
            while not result and time.monotonic() < deadline:
                time.sleep(0.5)
                result = prom.query('bcd_model_info{job="api"}')["data"]["result"]
            assert [(s["metric"]["version"], s["value"][1]) for s in result] == [(version, "1")]
        else:
            assert "401" in str(target.get("lastError")), target
    print(f"\nPrometheus, credentials_file with the {'right' if health == 'up' else 'wrong'} token: {health}")


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_model_info_only_the_served_version(tmp_path: Path, bundled_csv: Path, workers: int) -> None:
    svc = start_service(
        tmp_path / "svc",
        data_url=str(bundled_csv),
        token=TOKEN,
        extra_env={"WORKERS": str(workers), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc")},
    )
    try:
        first = train_and_promote(svc)
        second = train_and_promote(svc)
        r = httpx.post(f"{svc.url}/models/{first}/promote", headers=svc.auth(), timeout=60)
        assert r.status_code == 200, r.text
        wait_serving(svc, first)
        # every scrape (each may be answered by any worker) has exactly one series; they all settle on the
        # served version once every worker has followed the rollback
        settled = 0
        seen: list[list[tuple[str, str]]] = []
        deadline = time.monotonic() + 60
        while settled < 10 and time.monotonic() < deadline:
            series = MODEL_INFO.findall(_metrics(svc).text)
            seen.append(series)
            assert len(series) == 1, series
            settled = settled + 1 if series == [(first, "1.0")] else 0
        assert settled == 10, seen[-5:]
        assert second not in str(seen[-10:])
    finally:
        svc.stop()
    print(f"\nbcd_model_info, {workers} worker(s), after 3 promotions: {len(seen)} scrapes, one series each")
