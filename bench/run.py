"""Benchmark /predict against the HTTP floor on this machine, and /predict/batch end to end.

    python bench/run.py [--duration 10] [--rounds 3] [--memory-requests 1000000]    (or: make bench)

What it does, in order:

1. trains and promotes a model with the real pipeline (``python -m etl run``) in a temporary directory, from
   the bundled ``etl/data/BreastCancer.csv`` (or ``--data``);
2. starts the service twice, exactly as users run it (``python -m app``: one uvicorn worker, validation,
   Prometheus metrics and logging on, default settings), once with ``PREDICTION_LOG=async`` (the default:
   every prediction recorded in an SQLite file by the background writer) and once with ``off``, and times
   process start -> first ``/ready`` 200;
3. starts the floor (bench/floor_app.py: a bare ASGI app that parses the same JSON body and answers JSON)
   under the same uvicorn, on another free loopback port;
4. warms all three up, then runs ``wrk -t1 -c16 -d<N>s`` (POST bodies from a Lua script) on the floor and on
   both services' /predict in turn, ``--rounds`` times, so each ratio compares runs seconds apart on a
   shared CPU;
5. /predict/batch with 10,000 rows on both services: a client loop (http.client, one kept-alive connection)
   that sends the pre-encoded request and parses the whole response (orjson; 10,000 predictions checked),
   timed from send to parsed; plus wrk -c2 on the same body (server throughput, no client parse);
6. reads the async service's RSS after start, after the benchmark and (``--memory-requests``) after that
   many more single requests; then stops it gracefully and counts its records: every prediction it answered
   must be on record or counted as dropped;
7. prints a table and writes bench/results/<UTC timestamp>.json.

It is a benchmark, not a test: it exits 0 whatever the figures (non-zero only when it cannot run).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEFAULT_DATA = ROOT / "etl" / "data" / "BreastCancer.csv"
FEATURES = (
    ("clump_thickness", "Cl.thickness"),
    ("cell_size_uniformity", "Cell.size"),
    ("cell_shape_uniformity", "Cell.shape"),
    ("marginal_adhesion", "Marg.adhesion"),
    ("epithelial_cell_size", "Epith.c.size"),
    ("bare_nuclei", "Bare.nuclei"),
    ("bland_chromatin", "Bl.cromatin"),
    ("normal_nucleoli", "Normal.nucleoli"),
    ("mitoses", "Mitoses"),
)
try:
    from orjson import loads
except ImportError:  # the client's parse is part of the measurement; orjson is what a fast client uses
    from json import loads

MODES = ("async", "off")  # PREDICTION_LOG of the two services measured side by side
SINGLE_BODY = json.dumps(dict(zip([f[0] for f in FEATURES], (5, 1, 1, 1, 2, 1, 3, 1, 1), strict=True)))

# wrk prints one machine-readable line at the end (latencies in microseconds)
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("%(body)s", "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  io.write(string.format(
    'BENCH_JSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"errors_connect":%%d,"errors_read":%%d,' ..
    '"errors_write":%%d,"errors_status":%%d,"errors_timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,' ..
    '"max_us":%%d,"mean_us":%%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (robust to a busy machine, unlike wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for_200(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Poll until ``path`` answers 200; returns the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {path} answered 200")
        try:
            if http_call(port, "GET", path, timeout=2)[0] == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{path} did not answer 200 within {timeout}s")


def read_rows(csv_path: Path) -> list[dict[str, int]]:
    rows = []
    with csv_path.open(newline="") as f:
        for record in csv.DictReader(f):
            try:
                rows.append({snake: int(record[name]) for snake, name in FEATURES})
            except (KeyError, ValueError):
                continue  # the dataset's "?" bare nuclei
    return rows


def wrk(url: str, lua: Path, duration: float, connections: int, timeout: str = "10s") -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", f"--timeout={timeout}", "-s", str(lua), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^BENCH_JSON (.*)$", out, re.MULTILINE)
    if not match:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    r: dict[str, Any] = json.loads(match.group(1))
    seconds = r["duration_us"] / 1e6
    r["rps"] = r["requests"] / seconds if seconds else 0.0
    r["errors"] = sum(v for k, v in r.items() if k.startswith("errors_"))
    return r


def write_lua(directory: Path, name: str, body: bytes) -> Path:
    body_path = directory / f"{name}.json"
    body_path.write_bytes(body)
    lua_path = directory / f"{name}.lua"
    lua_path.write_text(LUA % {"body": body_path})
    return lua_path


def batch_client_loop(port: int, body: bytes, n_rows: int, requests: int, server_pid: int) -> dict[str, Any]:
    """Sequential requests on one kept-alive connection: send, read, parse (orjson) and check every time.

    Also the CPU time the server and this client spent, which a busy machine does not inflate like wall time.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    latencies = []
    server_cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
    try:
        for _ in range(requests):
            started = time.perf_counter()
            conn.request("POST", "/predict/batch", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = loads(response.read())
            latencies.append(time.perf_counter() - started)
            if response.status != 200 or len(payload["predictions"]) != n_rows:
                raise RuntimeError(f"/predict/batch answered {response.status}: {str(payload)[:300]}")
    finally:
        conn.close()
    server_cpu = (cpu_seconds(server_pid) - server_cpu) / requests
    client_cpu = (time.process_time() - client_cpu) / requests
    median = statistics.median(latencies)
    return {
        "requests": requests,
        "rows_per_request": n_rows,
        "latency_median_ms": median * 1e3,
        "latency_min_ms": min(latencies) * 1e3,
        "latency_max_ms": max(latencies) * 1e3,
        "rows_per_s_median": n_rows / median,
        "rows_per_s_overall": n_rows * requests / sum(latencies),
        "client_json_parser": loads.__module__,
        "server_cpu_ms_per_request": server_cpu * 1e3,
        "client_cpu_ms_per_request": client_cpu * 1e3,
        "rows_per_cpu_s": n_rows / (server_cpu + client_cpu),
    }


def start(cmd: list[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="floor + /predict pairs (default 3)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--batch-requests", type=int, default=30, help="client-loop batch requests")
    parser.add_argument(
        "--memory-requests",
        type=int,
        default=0,
        help="after the benchmark, send this many more single requests and report RSS (e.g. 1000000)",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CSV the model is trained on")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    if not shutil.which("wrk"):
        log("wrk is not installed: `make system-deps` (Debian package wrk)")
        return 2
    if not args.data.is_file():
        log(f"the data file is missing: {args.data}")
        return 2

    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "data"} | {"data": str(args.data)},
    }
    tmp = Path(tempfile.mkdtemp(prefix="bcd-bench-"))
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        PYTHONPATH=str(ROOT),
        DATA_URL=str(args.data),
        DATA_DIR=str(tmp / "data"),
        RESULTS_DIR=str(tmp / "results"),
        UPLOAD_DIR=str(tmp / "upload"),
        API_TOKEN="",
        ENVIRONMENT="development",
        GDRIVE_FOLDER_ID="",
        WORKERS="1",
        HOST="127.0.0.1",
    )
    with ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        log(f"training a model with the pipeline in {tmp} ...")
        subprocess.run(
            [sys.executable, "-m", "etl", "run"],
            cwd=tmp,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "pipeline.log").open("wb"),
        )

        services: dict[str, dict[str, Any]] = {}
        for mode in MODES:
            port = free_port()
            svc_env = env | {
                "PORT": str(port),
                "PREDICTION_LOG": mode,
                "PREDICTION_DB_URL": f"sqlite:///{tmp / f'records-{mode}.sqlite3'}",
            }
            log(f"starting the service with PREDICTION_LOG={mode}: python -m app on 127.0.0.1:{port}")
            t0 = time.monotonic()
            log_path = tmp / f"service-{mode}.log"
            svc = start([sys.executable, "-m", "app"], cwd=tmp, env=svc_env, log_path=log_path)
            stack.callback(stop, svc)
            ready_at = wait_for_200(port, "/ready", svc, timeout=120)
            services[mode] = {"port": port, "proc": svc, "db": tmp / f"records-{mode}.sqlite3"}
            report[mode] = {
                "startup_to_ready_s": ready_at - t0,
                "startup_cpu_s": cpu_seconds(svc.pid),
                "rss_mib_after_start": rss_mib(svc.pid),
            }
            log(
                f"/ready 200 after {report[mode]['startup_to_ready_s']:.2f} s; "
                f"RSS {report[mode]['rss_mib_after_start']:.0f} MiB"
            )

        floor_port = free_port()
        floor = start(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.floor_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(floor_port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            log_path=tmp / "floor.log",
        )
        stack.callback(stop, floor)
        # the floor answers 200 to the POST body only
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_call(floor_port, "POST", "/", SINGLE_BODY.encode(), timeout=2)[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or floor.poll() is not None:
                    raise
            time.sleep(0.05)

        for mode, svc in services.items():
            status, body = http_call(svc["port"], "POST", "/predict", SINGLE_BODY.encode())
            if status != 200:
                raise RuntimeError(f"/predict ({mode}) answered {status}: {body[:300]!r}")
            report[mode]["sample_response"] = json.loads(body)

        rows = read_rows(args.data)
        batch = {"instances": [rows[i % len(rows)] for i in range(args.batch_rows)]}
        batch_body = json.dumps(batch).encode()
        single_lua = write_lua(tmp, "single", SINGLE_BODY.encode())
        batch_lua = write_lua(tmp, "batch", batch_body)
        urls = {"floor": f"http://127.0.0.1:{floor_port}/"} | {
            mode: f"http://127.0.0.1:{svc['port']}/predict" for mode, svc in services.items()
        }

        log("warming up (3 s each) ...")
        for url in urls.values():
            wrk(url, single_lua, 3, args.connections)

        async_port = services["async"]["port"]
        dropped_before = dropped(async_port)
        rounds = []
        names = list(urls)
        for i in range(args.rounds):
            # rotate which goes first, so none always gets the quieter slot
            order = names[i % len(names) :] + names[: i % len(names)]
            result: dict[str, Any] = {}
            for name in order:
                result[name] = wrk(urls[name], single_lua, args.duration, args.connections)
            f = result["floor"]
            for mode in MODES:
                result[f"rps_ratio_{mode}"] = result[mode]["rps"] / f["rps"]
                result[f"p99_ratio_{mode}"] = result[mode]["p99_us"] / f["p99_us"]
            result["loadavg"] = os.getloadavg()
            rounds.append(result)
            log(
                f"round {i + 1}: floor {f['rps']:,.0f} req/s p99 {f['p99_us'] / 1e3:.2f} ms | "
                + " | ".join(
                    f"{mode} {result[mode]['rps']:,.0f} req/s p99 {result[mode]['p99_us'] / 1e3:.2f} ms "
                    f"({result[f'rps_ratio_{mode}']:.0%})"
                    for mode in MODES
                )
            )
        report["single"] = {"rounds": rounds, "async_dropped": dropped(async_port) - dropped_before} | {
            f"{kind}_ratio_median_{mode}": median_of([r[f"{kind}_ratio_{mode}"] for r in rounds])
            for kind in ("rps", "p99")
            for mode in MODES
        }

        for mode, svc in services.items():
            log(f"/predict/batch ({mode}), {args.batch_rows} rows: client loop (send -> response parsed) ...")
            pid = svc["proc"].pid
            batch_client_loop(svc["port"], batch_body, args.batch_rows, 3, pid)  # warm-up
            before = dropped(svc["port"])
            report[mode]["batch_client"] = batch_client_loop(
                svc["port"], batch_body, args.batch_rows, args.batch_requests, pid
            )
            report[mode]["batch_client"]["dropped"] = dropped(svc["port"]) - before
            log(f"/predict/batch ({mode}): wrk -c2 (server throughput, the client does not parse) ...")
            batch_url = f"http://127.0.0.1:{svc['port']}/predict/batch"
            before = dropped(svc["port"])
            batch_wrk = wrk(batch_url, batch_lua, args.duration, 2, timeout="30s")
            batch_wrk["rows_per_s"] = batch_wrk["rps"] * args.batch_rows
            batch_wrk["dropped"] = dropped(svc["port"]) - before
            report[mode]["batch_wrk_c2"] = batch_wrk
            report[mode]["rss_mib_after_bench"] = rss_mib(pid)

        svc = services["async"]
        if args.memory_requests:
            log(f"memory: {args.memory_requests:,} more single requests ...")
            sent = 0
            rss_trace = []
            started = time.monotonic()
            while sent < args.memory_requests:
                r = wrk(urls["async"], single_lua, 20, args.connections)
                sent += r["requests"]
                rss_trace.append((sent, rss_mib(svc["proc"].pid)))
                log(f"  {sent:,} requests, RSS {rss_trace[-1][1]:.1f} MiB")
            report["memory"] = {
                "requests": sent,
                "seconds": time.monotonic() - started,
                "rss_mib_trace": rss_trace,
                "rss_mib_after": rss_mib(svc["proc"].pid),
            }
        report["record"] = record_check(svc["port"], svc["proc"], svc["db"])
        report["machine"]["loadavg_after"] = os.getloadavg()

    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nreport: {out_path.relative_to(ROOT)}")
    return 0


def metric_total(port: int, name: str) -> float:
    """The sum of every sample of ``name`` in one scrape of the service's /metrics."""
    _, text = http_call(port, "GET", "/metrics")
    pattern = rb"^" + name.encode() + rb"(?:\{[^}]*\})? (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def dropped(port: int) -> float:
    return metric_total(port, "bcd_prediction_log_dropped_total")


def record_check(port: int, proc: subprocess.Popen[bytes], db: Path) -> dict[str, Any]:
    """Every prediction the PREDICTION_LOG=async service answered during the benchmark is in its database
    once a graceful stop has written the queue, or counted as dropped."""
    answered, lost = metric_total(port, "bcd_predictions_total"), dropped(port)
    stop(proc)  # SIGTERM: a graceful shutdown writes what is queued
    with sqlite3.connect(db) as connection:
        recorded = connection.execute("SELECT count(*) FROM predictions").fetchone()[0]
    return {"answered": answered, "dropped": lost, "recorded": recorded}


def print_table(report: dict[str, Any]) -> None:
    single = report["single"]
    rounds = single["rounds"]
    print()
    print(
        f"machine: {report['machine']['cpus']} CPUs, "
        f"1-min load average {report['machine']['loadavg_before'][0]:.1f} before, "
        f"{report['machine']['loadavg_after'][0]:.1f} after"
    )
    for mode in MODES:
        r = report[mode]
        print(
            f"start-up, PREDICTION_LOG={mode} (process start -> /ready 200): {r['startup_to_ready_s']:.2f} s "
            f"wall, {r['startup_cpu_s']:.2f} s CPU   (target <= 3 s)"
        )
    print()
    print(
        "| round | floor req/s | floor p99 | async req/s | async p50 | async p99 | async/floor "
        "| off req/s | off p50 | off p99 | off/floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rounds, 1):
        f, a, o = r["floor"], r["async"], r["off"]
        print(
            f"| {i} | {f['rps']:,.0f} | {f['p99_us'] / 1e3:.2f} ms "
            f"| {a['rps']:,.0f} | {a['p50_us'] / 1e3:.2f} ms | {a['p99_us'] / 1e3:.2f} ms "
            f"| {r['rps_ratio_async']:.0%} "
            f"| {o['rps']:,.0f} | {o['p50_us'] / 1e3:.2f} ms | {o['p99_us'] / 1e3:.2f} ms "
            f"| {r['rps_ratio_off']:.0%} |"
        )
    errors = sum(r[name]["errors"] for r in rounds for name in ("floor", *MODES))
    print(
        f"\n/predict vs the floor, median of {len(rounds)} rounds (wrk errors/non-2xx: {errors}; "
        f"async predictions not recorded: {single['async_dropped']:,.0f}):"
    )
    for mode in MODES:
        target = " (target >= 45%)" if mode == "async" else ""
        print(
            f"  PREDICTION_LOG={mode:5s} {single[f'rps_ratio_median_{mode}']:.0%} of the floor's requests/s"
            f"{target}, p99 x{single[f'p99_ratio_median_{mode}']:.2f} the floor's"
        )
    print()
    for mode in MODES:
        bc, bw = report[mode]["batch_client"], report[mode]["batch_wrk_c2"]
        target = "; target >= 100,000 rows/s" if mode == "async" else ""
        print(
            f"/predict/batch {bc['rows_per_request']:,} rows, PREDICTION_LOG={mode}, client loop (send -> "
            f"response parsed): {bc['rows_per_s_median']:,.0f} rows/s (median {bc['latency_median_ms']:.1f} "
            f"ms/request, {bc['requests']} requests{target}; not recorded: {bc['dropped']:,.0f})"
        )
        print(
            f"    CPU per request: server {bc['server_cpu_ms_per_request']:.1f} ms + client "
            f"{bc['client_cpu_ms_per_request']:.1f} ms = {bc['rows_per_cpu_s']:,.0f} rows per CPU-second; "
            f"wrk -c2 (no client parse): {bw['rows_per_s']:,.0f} rows/s, p50 {bw['p50_us'] / 1e3:.1f} ms, "
            f"p99 {bw['p99_us'] / 1e3:.1f} ms, errors/non-2xx {bw['errors']}, "
            f"not recorded {bw['dropped']:,.0f}"
        )
    rec = report["record"]
    print(
        f"\nprediction record (async): {rec['answered']:,.0f} predictions answered, {rec['recorded']:,} on "
        f"record after a graceful stop, {rec['dropped']:,.0f} counted as dropped"
    )
    a = report["async"]
    line = (
        f"RSS (async): {a['rss_mib_after_start']:.1f} MiB after start, "
        f"{a['rss_mib_after_bench']:.1f} MiB after the benchmark"
    )
    if "memory" in report:
        m = report["memory"]
        line += f", {m['rss_mib_after']:.1f} MiB after {m['requests']:,} more requests"
    print(line)


if __name__ == "__main__":
    sys.exit(main())
