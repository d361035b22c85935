"""Shared by the monitoring tests: the config files, their PromQL, and a real Prometheus on loopback."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from scripts.stack import write_scrape_config
from tests.conftest import stop_process

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
STATSD_MAPPING = PROMETHEUS_DIR / "statsd-mapping.yml"
GRAFANA_DIR = ROOT / "grafana"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"

# What Grafana puts in for its interval macro; the tests scrape every second, so a minute holds ~60 samples.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Series that only statsd-exporter (Airflow) produces: no exporter runs in the integration test.
AIRFLOW_JOB = 'job="airflow"'


def require_tool(name: str) -> str:
    """Path of a system tool the proof needs; a missing one fails (``make system-deps`` installs it)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run `make system-deps` (Debian packages prometheus, docker-compose)"
        )
    return path


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboards() -> dict[Path, dict[str, Any]]:
    return {path: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every non-row panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


@dataclass(frozen=True)
class Query:
    source: str  # "panel <title> / <refId>" or "alert <name>"
    expr: str  # as written (Grafana macros still in)

    @property
    def promql(self) -> str:
        expr = self.expr
        for macro, value in GRAFANA_MACROS.items():
            expr = expr.replace(macro, value)
        return expr

    @property
    def is_airflow(self) -> bool:
        return AIRFLOW_JOB in self.expr


def dashboard_queries() -> list[Query]:
    return [
        Query(f"panel {panel['title']!r} / {target.get('refId', '?')}", target["expr"])
        for dashboard in dashboards().values()
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


_CONDITION = re.compile(r"^(?P<signal>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<threshold>[0-9.eE+\-*\s]+)$", re.S)


def split_condition(expr: str) -> tuple[str, str, str]:
    """Split ``<signal> <op> <number>`` (every rule in alerts.yml has this shape) into its three parts."""
    match = _CONDITION.match(" ".join(expr.split()))
    if match is None:
        raise ValueError(f"not of the form '<signal> <op> <number>': {expr}")
    return match["signal"], match["op"], match["threshold"]


def statsd_map(name: str, metric_type: str) -> tuple[str, dict[str, str]] | None:
    """What statsd-mapping.yml makes of one StatsD metric: (Prometheus name, labels), or None if unmapped.

    statsd-exporter's glob mapping, first match wins: ``*`` is one dot-free name component.
    ``metric_type`` is the StatsD type: ms (timer), h, d, c (counter), g (gauge).
    """
    kinds = {"ms": "observer", "h": "observer", "d": "observer", "c": "counter", "g": "gauge"}
    for mapping in load_yaml(STATSD_MAPPING)["mappings"]:
        wanted = mapping.get("match_metric_type")
        if wanted and wanted != kinds[metric_type]:
            continue
        found = re.match("^" + re.escape(mapping["match"]).replace(r"\*", "([^.]*)") + "$", name)
        if found:
            labels = {
                key: re.sub(r"\$(\d+)", lambda g, found=found: found.group(int(g.group(1))), value)
                for key, value in mapping.get("labels", {}).items()
            }
            return mapping["name"], labels
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_config(targets: dict[str, str], tmp: Path, interval: str = "1s") -> Path:
    """prometheus.yml with each job's targets replaced by ``targets[job]`` and short intervals.

    The rule files are copied beside it, so the real alerts.yml is evaluated (the rewrite `make stack` uses).
    """
    return write_scrape_config(targets, tmp, interval)


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def query(self, promql: str) -> dict[str, Any]:
        """``/api/v1/query``: returns the JSON body (status "success" or "error")."""
        response = httpx.post(f"{self.url}/api/v1/query", data={"query": promql}, timeout=10)
        body: dict[str, Any] = response.json()
        return body

    def api(self, path: str) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}{path}", timeout=10).json()
        return body


@contextlib.contextmanager
def running_prometheus(config: Path, tmp: Path, port: int, timeout: float = 30.0) -> Iterator[Prometheus]:
    """A real Prometheus bound to 127.0.0.1:``port``, with its TSDB under ``tmp``."""
    binary = require_tool("prometheus")
    log_path = tmp / "prometheus.log"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{prom.log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready within {timeout}s:\n{prom.log()}")
            time.sleep(0.1)
        yield prom
    finally:
        stop_process(proc)
