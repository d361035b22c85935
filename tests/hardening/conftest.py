"""Helpers of the hardening suite: a promoted live service, registry checks and a scriptable data server."""

from __future__ import annotations

import contextlib
import http.server
import pickle
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from etl.hashing import sha256_file
from tests.conftest import Service, start_service
from tests.registry_support import meta_of, metrics_of, version_dir
from tests.waiting import wait_until

TOKEN = "hardening-token-7f3a9c2e1b5d4a60"
PREDICT_BODY = {
    "clump_thickness": 8,
    "cell_size_uniformity": 10,
    "cell_shape_uniformity": 10,
    "marginal_adhesion": 8,
    "epithelial_cell_size": 7,
    "bare_nuclei": 10,
    "bland_chromatin": 9,
    "normal_nucleoli": 7,
    "mitoses": 1,
}


class _Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",))


def malicious_pickle(marker: Path) -> bytes:
    """A valid pickle that writes ``marker`` when unpickled (joblib.load reads plain pickles too)."""
    return pickle.dumps(_Payload(marker))


def client(service: Service, timeout: float = 60.0) -> httpx.Client:
    return httpx.Client(base_url=service.url, headers=service.auth(), timeout=timeout)


def train_and_promote(service: Service, **train_body: Any) -> str:
    """POST /train then /evaluate (promote); return the version, which must now be served."""
    with client(service) as c:
        r = c.post("/train", json={"force": True, **train_body})
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        r = c.post("/evaluate", json={"version": version})
        assert r.status_code == 200, r.text
        assert r.json()["promoted"] is True, r.text
    wait_serving(service, version)
    return version


def wait_serving(service: Service, version: str, timeout: float = 15.0) -> None:
    def ready() -> dict[str, Any] | None:
        r = httpx.get(service.url + "/ready", timeout=5)
        body: dict[str, Any] = r.json()
        return body if r.status_code == 200 and body.get("model_version") == version else None

    wait_until(ready, timeout, f"the service to serve {version} (GET /ready)")


def start_promoted(workdir: Path, data_url: str, **kwargs: Any) -> tuple[Service, str]:
    service = start_service(workdir, data_url=data_url, token=TOKEN, **kwargs)
    try:
        return service, train_and_promote(service)
    except BaseException:
        service.stop()
        raise


def models(service: Service) -> dict[str, Any]:
    r = httpx.get(service.url + "/models", timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def check_registry_consistent(service: Service) -> dict[str, Any]:
    """What GET /models lists must be true in the stores: every version listed has its files in the artifact
    folder, every servable one verifies and its evaluation passed the gate."""
    listing = models(service)
    root = service.results_dir
    for m in listing["models"]:
        vdir = version_dir(root, m["version"])
        meta = meta_of(root, m["version"])
        assert {"model.json", "model.joblib", "holdout.csv"} <= set(meta["files"]), m
        for name in meta["files"]:
            assert (vdir / name).is_file(), f"{m['version']} lists {name}, which the store does not hold"
        if m["servable"] or m["served"]:
            assert m["status"] == "passed", m
            for name in ("model.json", "model.joblib", "holdout.csv"):
                assert sha256_file(vdir / name) == meta["files"][name], f"{m['version']} {name} fails sha256"
            metrics = metrics_of(root, m["version"])
            assert metrics is not None and metrics["quality_gate"]["passed"] is True, m
    served = listing["served_version"]
    if served is not None:
        assert [m["version"] for m in listing["models"] if m["served"]] == [served], listing
    return listing


# --- a scriptable HTTP data source ---------------------------------------------------------------


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "text/csv"
    delay_before: float = 0.0  # seconds before the status line (a slow or stalled source)
    stall_after_headers: float = 0.0  # send headers and part of the body, then go quiet this long
    drop: bool = False  # close the connection without any response
    status: int = 200


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, Route]
    hits: dict[str, int]
    stop: threading.Event

    def do_GET(self) -> None:
        route = self.routes.get(self.path)
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if route is None:
            self.send_error(404)
            return
        if route.delay_before:
            self.stop.wait(route.delay_before)
        if route.drop:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        if route.stall_after_headers:
            self.wfile.write(route.body[: len(route.body) // 2])
            self.wfile.flush()
            self.stop.wait(route.stall_after_headers)
            self.close_connection = True
            return
        self.wfile.write(route.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class DataServer:
    base: str
    routes: dict[str, Route]
    hits: dict[str, int]

    def url(self, path: str) -> str:
        return self.base + path


@contextlib.contextmanager
def data_server(routes: dict[str, Route]) -> Iterator[DataServer]:
    """Serve scripted answers on 127.0.0.1 (threaded, so a stalled answer blocks nobody else)."""
    stop = threading.Event()
    hits: dict[str, int] = {}
    handler = type("H", (_Handler,), {"routes": routes, "hits": hits, "stop": stop})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield DataServer(f"http://127.0.0.1:{server.server_address[1]}", routes, hits)
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.fixture
def promoted_service(tmp_path: Path, bundled_csv: Path) -> Iterator[tuple[Service, str]]:
    """A real service with token auth and one trained, evaluated and promoted version."""
    service, version = start_promoted(tmp_path / "svc", str(bundled_csv))
    try:
        yield service, version
    finally:
        service.stop()
