"""``make stack``: the model service, Airflow and Prometheus together on this machine, without Docker.

    python -m scripts.stack up      start all three in the foreground; Ctrl-C stops them
    python -m scripts.stack down    stop the stack of STACK_DIR (from another terminal, or after a crash)

Ports and folder, from the environment or the options of the same name: STACK_API_PORT (8000),
STACK_AIRFLOW_PORT (8080), STACK_PROMETHEUS_PORT (9090), STACK_DIR (.stack). A port already taken is
refused before anything starts. The service reads its own settings (.env, API_TOKEN, RESULTS_DIR...) as
under ``make run``; when it serves no model yet, the pipeline runs once first
(``python -m etl run --serve-fallback``).

- the service: ``python -m app`` from this interpreter (.venv) on 127.0.0.1:STACK_API_PORT;
- Airflow: ``airflow standalone`` from .airflow-venv, only ever as a subprocess (.venv never imports
  Airflow), with its home in STACK_DIR/airflow-home, the project's dags/, the ``ml_api`` connection
  pointing at the service with its API token, and the DAG unpaused with no schedule
  (ML_PIPELINE_SCHEDULE, default None: trigger it from the UI or the REST API);
- Prometheus (Debian package) with prometheus/prometheus.yml, its targets rewritten to these ports, and
  prometheus/alerts.yml. Grafana and statsd-exporter have no Debian package: they run only in
  docker-compose, so the Airflow scrape job is left out here.

Each part runs in its own session (``setsid``); STACK_DIR/pids/<part>.pid holds "<pid> <start time>".
Stopping signals every process of that session (Airflow's task processes move to process groups of their
own but stay in the session), waits, then kills what is left. Logs: STACK_DIR/logs/<part>.log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import yaml

from etl.logger import setup_logging

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "prometheus"
AIRFLOW_BIN_DIR = ROOT / ".airflow-venv" / "bin"
DAGS_DIR = ROOT / "dags"
DAG_ID = "breast_cancer_pipeline"
AIRFLOW_USER = "admin"  # standalone's SimpleAuthManager user; its password is generated on first start
# in AIRFLOW_HOME (Airflow 3.3); the name, not a password
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"  # noqa: S105
AIRFLOW_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")

# seconds; Airflow standalone needs 1-2 minutes on a small machine, more on its first start (migrations)
START_TIMEOUT = {"api": 60.0, "prometheus": 60.0, "airflow": 600.0}
STOP_TIMEOUT = 30.0

NOT_HERE = (
    "Grafana and statsd-exporter are not installable here (no Debian package): they run only in "
    "docker-compose (docs/deployment.md). This stack is the service, Airflow and Prometheus."
)

log = logging.getLogger("stack")


class StackError(Exception):
    """The stack cannot start or stop; the message says why and what to do."""


class Stopped(Exception):
    """Ctrl-C, SIGTERM or `make stack-down` asked the stack to stop."""


@dataclass(frozen=True)
class StackConfig:
    directory: Path
    api_port: int
    airflow_port: int
    prometheus_port: int

    @property
    def ports(self) -> dict[str, int]:
        return {"api": self.api_port, "airflow": self.airflow_port, "prometheus": self.prometheus_port}

    def url(self, part: str) -> str:
        return f"http://127.0.0.1:{self.ports[part]}"

    @property
    def pid_dir(self) -> Path:
        return self.directory / "pids"

    @property
    def log_dir(self) -> Path:
        return self.directory / "logs"

    @property
    def airflow_home(self) -> Path:
        return self.directory / "airflow-home"

    @property
    def password_file(self) -> Path:
        return self.airflow_home / PASSWORD_FILE

    @property
    def prometheus_dir(self) -> Path:
        return self.directory / "prometheus"

    @property
    def supervisor_pid(self) -> Path:
        return self.directory / "stack.pid"

    @property
    def ready_file(self) -> Path:
        """Written once every part answers: the URLs (no secret); removed when the stack stops."""
        return self.directory / "stack.json"


# --- processes -------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state first), or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot); None when it is gone or a zombie."""
    fields = _stat(pid)
    return int(fields[19]) if fields and fields[0] != "Z" else None


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and fields[0] != "Z" and int(fields[3]) == sid:
                members.append(int(entry.name))
    return members


def write_pid(path: Path, pid: int, ticks: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {ticks}\n")


def read_pid(path: Path) -> tuple[int, int] | None:
    """(pid, start ticks) from a pid file, or None when it is missing or unreadable."""
    try:
        pid, ticks = path.read_text().split()
        return int(pid), int(ticks)
    except (OSError, ValueError):
        return None


def is_running(pid: int, ticks: int) -> bool:
    """The process recorded as (pid, ticks) is still alive (not another one that reused the pid)."""
    return start_ticks(pid) == ticks


def session_alive(pid: int, ticks: int) -> bool:
    """Some process of the session that ``pid`` leads (recorded with ``ticks``) is still alive."""
    leader = start_ticks(pid)
    if leader is not None and leader != ticks:
        return False  # the pid was reused by an unrelated process: that session ended long ago
    return bool(session_members(pid))


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``check`` until it is true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_session(pid: int, ticks: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every process of the session ``pid`` leads; SIGKILL what is left after ``timeout`` s."""
    for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if not session_alive(pid, ticks):
            return
        for member in session_members(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, sig)
        if wait_until(lambda: not session_alive(pid, ticks), grace):
            return
        log.warning("session %d still has processes %s after %s", pid, session_members(pid), sig.name)
    raise StackError(f"processes {session_members(pid)} survived SIGKILL")


# --- ports and configuration --------------------------------------------------------------------


def port_taken(port: int) -> bool:
    """Something listens on 127.0.0.1:``port`` (SO_REUSEADDR, so closed connections do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_scrape_config(
    targets: Mapping[str, str | None], directory: Path, interval: str | None = None
) -> Path:
    """prometheus/prometheus.yml with each job's target replaced by ``targets[job]`` (None leaves the job
    out), written to ``directory`` with its rule files beside it, so the project's alerts.yml is evaluated.

    Args:
        targets: one ``host:port`` (or None) for every job of the file, by job name.
        directory: where prometheus.yml and the rule files are written.
        interval: scrape and evaluation interval (and scrape timeout); None keeps the file's.

    Returns:
        The path of the written prometheus.yml.

    Raises:
        ValueError: ``targets`` does not name exactly the file's jobs.
    """
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    if interval is not None:
        config["global"].update(
            {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval}
        )
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    if set(jobs) != set(targets):
        raise ValueError(f"scrape jobs {sorted(jobs)} != rewritten {sorted(targets)}")
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": [targets[job["job_name"]]]}]}
        for job in config["scrape_configs"]
        if targets[job["job_name"]] is not None
    ]
    directory.mkdir(parents=True, exist_ok=True)
    for rule_file in config.get("rule_files", []):
        shutil.copy(PROMETHEUS_DIR / rule_file, directory / rule_file)
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def service_token() -> str:
    """The API token the service will use (environment, then .env), read the way the service reads it."""
    from app.settings import ServiceSettings
    from etl.settings import SettingsError, load_settings

    try:
        return load_settings(ServiceSettings).api_token.get_secret_value()
    except SettingsError as exc:  # names each variable and its rule, never a value
        raise StackError(f"the service's {exc}") from None


def model_served() -> bool:
    from etl.registry import Registry
    from etl.settings import Settings, load_settings

    registry = Registry.from_settings(load_settings(Settings))
    try:
        return registry.served_version() is not None
    finally:
        registry.close()


def airflow_env(cfg: StackConfig, token: str) -> dict[str, str]:
    """Airflow standalone's environment: ours without .venv's Python variables, plus its own settings.

    standalone starts scheduler, dag-processor, api-server and triggerer as ``airflow <part>`` through
    PATH, so the venv's bin must come first; the execution API URL must follow the API port.
    """
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}}
    connection: dict[str, Any] = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": cfg.api_port,
        "schema": "http",
    }
    if token:
        connection["password"] = token
    url = cfg.url("airflow")
    env.update(
        PATH=f"{AIRFLOW_BIN_DIR}:{env.get('PATH', os.defpath)}",
        AIRFLOW_HOME=str(cfg.airflow_home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_DIR),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(cfg.airflow_port),
        AIRFLOW__API__BASE_URL=url,
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{url}/execution/",
        # log servers of the task runner and the triggerer: internal, any free port
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(64),
        AIRFLOW_CONN_ML_API=json.dumps(connection),
    )
    env.setdefault("ML_PIPELINE_SCHEDULE", "None")
    return env


# --- readiness checks ----------------------------------------------------------------------------


def answers(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code == 200


def airflow_password(cfg: StackConfig) -> str:
    password: str = json.loads(cfg.password_file.read_text())[AIRFLOW_USER]
    return password


def airflow_healthy(cfg: StackConfig) -> bool:
    body = httpx.get(f"{cfg.url('airflow')}/api/v2/monitor/health", timeout=5).json()
    return all((body.get(part) or {}).get("status") == "healthy" for part in AIRFLOW_COMPONENTS)


def airflow_has_dag(cfg: StackConfig) -> bool:
    url = cfg.url("airflow")
    login = {"username": AIRFLOW_USER, "password": airflow_password(cfg)}
    token = httpx.post(f"{url}/auth/token", json=login, timeout=10).json()["access_token"]
    response = httpx.get(
        f"{url}/api/v2/dags/{DAG_ID}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    return response.status_code == 200


# --- the supervisor ------------------------------------------------------------------------------


@dataclass
class Part:
    name: str
    proc: subprocess.Popen[bytes]
    ticks: int  # start time of proc: with its pid, names its session unambiguously
    pid_file: Path
    log_file: Path


class Stack:
    """Starts the parts in order, watches them, and stops them all (in reverse order) however it ends."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.parts: list[Part] = []
        self.stop_reason: str | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_reason = signal.Signals(signum).name

    def _check_stop(self) -> None:
        if self.stop_reason:
            raise Stopped(self.stop_reason)

    def wait(self, check: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
        """``wait_until`` that gives up as soon as the stack is asked to stop."""

        def done() -> bool:
            self._check_stop()
            return check()

        return wait_until(done, timeout, interval)

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> Part:
        log_file = self.cfg.log_dir / f"{name}.log"
        with log_file.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        part = Part(name, proc, start_ticks(proc.pid) or 0, self.cfg.pid_dir / f"{name}.pid", log_file)
        self.parts.append(part)
        write_pid(part.pid_file, proc.pid, part.ticks)
        return part

    def stop(self, part: Part) -> None:
        stop_session(part.proc.pid, part.ticks)
        part.proc.wait(10)
        part.pid_file.unlink(missing_ok=True)
        self.parts.remove(part)

    def wait_ready(self, part: Part, check: Callable[[], bool]) -> None:
        def ready() -> bool:
            if part.proc.poll() is not None:
                raise StackError(
                    f"{part.name} exited with {part.proc.returncode} while starting; see {part.log_file}"
                )
            with contextlib.suppress(httpx.HTTPError, OSError, ValueError, KeyError):
                return check()
            return False

        timeout = START_TIMEOUT[part.name]
        if not self.wait(ready, timeout):
            raise StackError(f"{part.name} was not ready within {timeout:.0f} s; see {part.log_file}")

    def run_pipeline(self) -> None:
        """Like `make run`: when no model is served yet, run the pipeline once (fatal only if none is)."""
        if model_served():
            log.info("a model is served already: the pipeline is not run at start")
            return
        part = self.start("pipeline", [sys.executable, "-m", "etl", "run", "--serve-fallback"], os.environ)
        log.info("no model is served yet: running the pipeline once (log: %s)", part.log_file)
        self.wait(lambda: part.proc.poll() is not None, float("inf"))
        code = part.proc.returncode
        self.stop(part)
        if code != 0:
            raise StackError(f"the pipeline failed (exit {code}) and no model is served; see {part.log_file}")

    def up(self) -> None:
        cfg = self.cfg
        started = time.monotonic()
        token = service_token()
        self.run_pipeline()

        api = self.start(
            "api",
            [sys.executable, "-m", "app"],
            {**os.environ, "HOST": "127.0.0.1", "PORT": str(cfg.api_port)},
        )
        log.info("service starting on %s", cfg.url("api"))
        self.wait_ready(api, lambda: answers(f"{cfg.url('api')}/health"))

        config = write_scrape_config(
            {
                "api": f"127.0.0.1:{cfg.api_port}",
                "prometheus": f"127.0.0.1:{cfg.prometheus_port}",
                "airflow": None,  # statsd-exporter: docker-compose only
            },
            cfg.prometheus_dir,
        )
        prometheus = self.start(
            "prometheus",
            [
                shutil.which("prometheus") or "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={cfg.prometheus_dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{cfg.prometheus_port}",
            ],
            os.environ,
        )
        log.info("Prometheus starting on %s", cfg.url("prometheus"))
        self.wait_ready(prometheus, lambda: answers(f"{cfg.url('prometheus')}/-/ready"))

        cfg.airflow_home.mkdir(parents=True, exist_ok=True)
        airflow = self.start(
            "airflow", [str(AIRFLOW_BIN_DIR / "airflow"), "standalone"], airflow_env(cfg, token)
        )
        log.info(
            "Airflow standalone starting on %s (1-2 minutes; log: %s)", cfg.url("airflow"), airflow.log_file
        )
        self.wait_ready(airflow, lambda: airflow_healthy(cfg))
        log.info("Airflow is up; waiting for it to load the DAG %s", DAG_ID)
        self.wait_ready(airflow, lambda: airflow_has_dag(cfg))

        cfg.ready_file.write_text(json.dumps({part: cfg.url(part) for part in cfg.ports}, indent=2) + "\n")
        log.info("stack up in %.0f s", time.monotonic() - started)
        self.banner(token)

    def banner(self, token: str) -> None:
        cfg = self.cfg
        auth = "Bearer API_TOKEN (from the environment or .env)" if token else "none (API_TOKEN is empty)"
        lines = [
            "",
            f"  service     {cfg.url('api')}/docs   (token for POST routes: {auth})",
            f"  Airflow     {cfg.url('airflow')}   login {AIRFLOW_USER} / {airflow_password(cfg)}"
            f"   (DAG {DAG_ID}: press Trigger)",
            f"  Prometheus  {cfg.url('prometheus')}/targets   (alerts: {cfg.url('prometheus')}/alerts)",
            f"  logs in {cfg.log_dir}",
            "  stop with Ctrl-C here, or `make stack-down` from another terminal",
            "",
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()

    def watch(self) -> None:
        """Until asked to stop: a part that exits on its own stops the whole stack."""
        while True:
            self._check_stop()
            for part in self.parts:
                if part.proc.poll() is not None:
                    raise StackError(f"{part.name} exited with {part.proc.returncode}; see {part.log_file}")
            time.sleep(1)

    def stop_all(self) -> None:
        for part in reversed(list(self.parts)):
            log.info("stopping %s", part.name)
            try:
                self.stop(part)
            except (StackError, subprocess.TimeoutExpired) as exc:
                log.error("could not stop %s: %s", part.name, exc)

    def run(self) -> int:
        """Start, watch, and stop everything; the exit code of `make stack`."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        code = 0
        try:
            self.up()
            self.watch()
        except Stopped as stop:
            log.info("%s: stopping the stack", stop)
        except StackError as exc:
            log.error("%s", exc)
            code = 1
        finally:
            self.cfg.ready_file.unlink(missing_ok=True)
            self.stop_all()
        log.info("stack stopped")
        return code


# --- commands ------------------------------------------------------------------------------------


def preflight(cfg: StackConfig) -> None:
    """Refuse, before anything starts: another stack here, a port taken or repeated, a tool missing."""
    recorded = read_pid(cfg.supervisor_pid)
    if recorded and is_running(*recorded):
        raise StackError(
            f"a stack is already running from {cfg.directory} (pid {recorded[0]}): make stack-down"
        )
    leftovers = [
        path.stem
        for path in sorted(cfg.pid_dir.glob("*.pid"))
        if (rec := read_pid(path)) and session_alive(*rec)
    ]
    if leftovers:
        raise StackError(
            f"parts of an earlier stack are still running ({', '.join(leftovers)}): make stack-down"
        )
    if len(set(cfg.ports.values())) != len(cfg.ports):
        raise StackError(f"the ports must differ: {cfg.ports}")
    taken = [f"{name} port {port}" for name, port in cfg.ports.items() if port_taken(port)]
    if taken:
        raise StackError(
            f"{', '.join(taken)} already in use on 127.0.0.1: stop what listens there or choose other ports "
            "(STACK_API_PORT, STACK_AIRFLOW_PORT, STACK_PROMETHEUS_PORT)"
        )
    if shutil.which("prometheus") is None:
        raise StackError("prometheus is not installed: run `make system-deps` (Debian package prometheus)")
    if not (AIRFLOW_BIN_DIR / "airflow").exists():
        raise StackError(f"{AIRFLOW_BIN_DIR / 'airflow'} is missing: run `make airflow-venv`")


def cmd_up(cfg: StackConfig) -> int:
    try:
        preflight(cfg)
    except StackError as exc:
        log.error("%s", exc)
        return 1
    log.info(NOT_HERE)
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    write_pid(cfg.supervisor_pid, os.getpid(), start_ticks(os.getpid()) or 0)
    try:
        return Stack(cfg).run()
    finally:
        cfg.supervisor_pid.unlink(missing_ok=True)


def cmd_down(cfg: StackConfig) -> int:
    """Ask the running `up` to stop; then stop whatever part it left behind (it was killed, say)."""
    stopped_any = False
    recorded = read_pid(cfg.supervisor_pid)
    if recorded and is_running(*recorded):
        pid, ticks = recorded
        log.info("asking the stack (pid %d) to stop", pid)
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not is_running(pid, ticks), 4 * STOP_TIMEOUT + 30):
            log.warning("the stack (pid %d) did not stop in time; stopping its parts directly", pid)
        stopped_any = True
    for pid_file in sorted(cfg.pid_dir.glob("*.pid")):
        part = read_pid(pid_file)
        if part and session_alive(*part):
            log.info("stopping %s (session %d)", pid_file.stem, part[0])
            stop_session(*part)
            stopped_any = True
        pid_file.unlink(missing_ok=True)
    if recorded and is_running(*recorded):
        os.kill(recorded[0], signal.SIGKILL)
    cfg.supervisor_pid.unlink(missing_ok=True)
    cfg.ready_file.unlink(missing_ok=True)
    if stopped_any:
        log.info("stack stopped")
    else:
        log.info("no stack was running from %s", cfg.directory)
    return 0


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("STACK_DIR") or ROOT / ".stack"))
    parser.add_argument("--api-port", type=int, default=_env_port("STACK_API_PORT", 8000))
    parser.add_argument("--airflow-port", type=int, default=_env_port("STACK_AIRFLOW_PORT", 8080))
    parser.add_argument("--prometheus-port", type=int, default=_env_port("STACK_PROMETHEUS_PORT", 9090))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("INFO")
    os.chdir(ROOT)  # the service's relative paths and .env are the project's, as under `make run`
    cfg = StackConfig(args.dir.resolve(), args.api_port, args.airflow_port, args.prometheus_port)
    return cmd_up(cfg) if args.command == "up" else cmd_down(cfg)


if __name__ == "__main__":
    sys.exit(main())
