"""Data sources named through ``POST /train`` (issue 12: findings 3, 4, 5, 7 and the retention part of 8).

Real services on loopback and a real "internal" HTTP server on 127.0.0.1 that holds secrets, redirects,
loops and trickles. ``closed`` runs with the defaults (DATA_URL is the bundled file, so no remote host is
allowed); ``loopback`` allows 127.0.0.1 and private networks, as for an internal data server, with a
3 s download deadline, MAX_DATA_ROWS=1000, RAW_RETENTION=3 and BACKUP_RETENTION=2. A few unit tests fake
DNS where a real resolver cannot show the case (a name resolving to another address than it connects to).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import ipaddress
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from etl.errors import DataSourceNotAllowedError
from etl.load import load_data, source_policy
from etl.registry import Registry
from etl.source import IPAddress, SourcePolicy
from tests.conftest import BUNDLED_CSV, BUNDLED_SHA256, ROOT, Service, start_service
from tests.hardening.conftest import TOKEN, client, start_promoted, train_and_promote
from tests.pipeline_support import make_settings
from tests.registry_support import meta_of, registry_db_url, sql

SECRET = "AWS_SECRET_ACCESS_KEY=AKIAHARDENINGSECRET42"
PASSWORD = "db_password=hunter2-internal-only"
DEADLINE = 3
MAX_ROWS = 1000
HEADER = BUNDLED_CSV.read_text().splitlines()[0]


# --- an internal HTTP server on 127.0.0.1 -------------------------------------------------------


class Internal:
    """Scripted answers; ``hits[path]`` counts requests, ``stop`` ends trickles."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]] = {}
        self.hits: dict[str, int] = {}
        self.stop = threading.Event()
        self.port = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _send(body: bytes, status: int = 200, ctype: str = "text/csv") -> Callable[[Any], None]:
    def answer(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return answer


def _redirect(location: str) -> Callable[[Any], None]:
    def answer(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return answer


def _trickle(internal: Internal, *, headers_too: bool) -> Callable[[Any], None]:
    """One byte every 0.5 s (a CSV header line, 60 bytes: 30 s) until the client goes away."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nConnection: close\r\n\r\n"
    body = HEADER.encode()[:60]

    def answer(h: http.server.BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        if not headers_too:
            h.wfile.write(head)
        try:
            for byte in (head if headers_too else b"") + body:
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
                if internal.stop.wait(0.5):
                    return
        except OSError:  # the client gave up: that is the point
            return

    return answer


@pytest.fixture(scope="module")
def internal() -> Iterator[Internal]:
    state = Internal()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            state.hits[path] = state.hits.get(path, 0) + 1
            route = state.routes.get(path)
            if route is None:
                self.send_error(404)
                return
            route(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    good = BUNDLED_CSV.read_bytes()
    lines = good.decode().splitlines(keepends=True)
    bad_value = lines[1].replace(lines[1].split(",")[1], f'"{PASSWORD}"', 1)
    state.routes.update(
        {
            "/good.csv": _send(good),
            "/reversed.csv": _send((lines[0] + "".join(reversed(lines[1:]))).encode()),
            "/secret.env": _send(f"{SECRET},{PASSWORD}\nx,y\n".encode(), ctype="text/plain"),
            "/secret-value.csv": _send((lines[0] + bad_value + "".join(lines[2:])).encode()),
            "/many-rows.csv": _send((lines[0] + "".join(lines[1:]) * 3).encode()),
            "/to-good": _redirect("/good.csv"),
            "/to-localhost": _redirect(state.url("/secret.env", host="localhost")),
            "/to-file": _redirect("file:///etc/passwd"),
            "/to-gopher": _redirect("gopher://127.0.0.1/x"),
            "/loop": _redirect("/loop"),
            "/trickle-body.csv": _trickle(state, headers_too=False),
            "/trickle-headers.csv": _trickle(state, headers_too=True),
        }
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Default settings: DATA_URL is the bundled file, so a data_url override may name no host at all."""
    svc, _ = start_promoted(tmp_path_factory.mktemp("closed") / "svc", str(BUNDLED_CSV))
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """127.0.0.1 allowed as an internal data server, with the limits under test set low."""
    env = {
        "DATA_URL_ALLOWED_HOSTS": "127.0.0.1",
        "DATA_URL_ALLOW_PRIVATE_NETWORKS": "true",
        "DOWNLOAD_DEADLINE_SECONDS": str(DEADLINE),
        "HTTP_READ_TIMEOUT": "30",
        "DOWNLOAD_RETRIES": "2",
        "MAX_DATA_ROWS": str(MAX_ROWS),
        "RAW_RETENTION": "3",
        "BACKUP_RETENTION": "2",
    }
    svc, _ = start_promoted(tmp_path_factory.mktemp("loopback") / "svc", str(BUNDLED_CSV), extra_env=env)
    try:
        yield svc
    finally:
        svc.stop()


def _raw(service: Service) -> set[str]:
    return {p.name for p in (service.workdir / "data" / "raw").iterdir()}


def _train(service: Service, data_url: str) -> httpx.Response:
    with client(service) as c:
        return c.post("/train", json={"data_url": data_url})


def _no_secret(*texts: str) -> None:
    for text in texts:
        for marker in ("AKIAHARDENINGSECRET42", "hunter2", "AWS_SECRET", "db_password"):
            assert marker not in text, f"{marker!r} echoed: {text[:500]}"


# --- finding 3: SSRF with read-back -------------------------------------------------------------

SPELLINGS = [
    "http://127.0.0.1:{port}/secret.env",
    "HTTP://127.0.0.1:{port}/secret.env",
    "http://2130706433:{port}/secret.env",
    "http://0x7f.0.0.1:{port}/secret.env",
    "http://0177.0.0.1:{port}/secret.env",
    "http://127.1:{port}/secret.env",
    "http://localhost.:{port}/secret.env",
    "http://LOCALHOST:{port}/secret.env",
    "http://[::ffff:127.0.0.1]:{port}/secret.env",
    "http://reader:pw@127.0.0.1:{port}/secret.env",
]


@pytest.mark.integration
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_train_internal_url_in_any_spelling_refused_before_any_request(
    closed: Service, internal: Internal, spelling: str
) -> None:
    before_hits, before_raw = dict(internal.hits), _raw(closed)
    r = _train(closed, spelling.format(port=internal.port))
    print(f"\n{spelling}: {r.status_code} {r.text[:200]}")
    assert r.status_code == 422, r.text
    assert "DATA_URL_ALLOWED_HOSTS" in r.json()["detail"], r.text
    _no_secret(r.text, closed.log())
    assert internal.hits == before_hits, "the internal server was contacted"
    assert _raw(closed) == before_raw


@pytest.mark.integration
def test_train_override_on_data_url_host_refused_while_data_url_itself_works(
    tmp_path: Path, internal: Internal
) -> None:
    svc = start_service(tmp_path / "svc", data_url=internal.url("/good.csv"), token=TOKEN)
    try:
        before = dict(internal.hits)
        r = _train(svc, internal.url("/secret.env"))
        assert r.status_code == 422, r.text
        assert "loopback" in r.json()["detail"] and "DATA_URL_ALLOW_PRIVATE_NETWORKS" in r.json()["detail"]
        assert internal.hits.get("/secret.env") == before.get("/secret.env")
        with client(svc) as c:  # the operator's DATA_URL is trusted with any host
            ok = c.post("/train")
        assert ok.status_code == 200, ok.text
        assert ok.json()["data_source"] == internal.url("/good.csv")
    finally:
        svc.stop()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "words", "hits"),
    [
        ("/to-localhost", "redirected to a host that is not in DATA_URL_ALLOWED_HOSTS", 1),
        ("/to-file", "redirected to a URL that is not http(s)", 1),
        ("/to-gopher", "redirected to a URL that is not http(s)", 1),
        ("/loop", "redirected more than 5 times", 6),
    ],
)
def test_train_every_redirect_hop_checked_and_refusals_not_retried(
    loopback: Service, internal: Internal, path: str, words: str, hits: int
) -> None:
    before = dict(internal.hits)
    r = _train(loopback, internal.url(path))
    print(f"\n{path}: {r.status_code} {r.text[:200]}")
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
    assert internal.hits.get(path, 0) - before.get(path, 0) == hits  # DOWNLOAD_RETRIES=2 not used
    assert internal.hits.get("/secret.env") == before.get("/secret.env")
    _no_secret(r.text)


@pytest.mark.integration
def test_train_redirect_within_allowed_hosts_followed(loopback: Service, internal: Internal) -> None:
    r = _train(loopback, internal.url("/to-good"))
    assert r.status_code == 200, r.text
    assert r.json()["data_sha256"] == BUNDLED_SHA256


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/secret.env", "2 unexpected column(s) at header position(s) 1, 2"),
        ("/secret-value.csv", "column 'Cl.thickness' has 1 non-numeric value(s) at line(s) 2"),
    ],
)
def test_train_refused_source_content_never_echoed_and_download_deleted(
    loopback: Service, internal: Internal, path: str, words: str
) -> None:
    before = _raw(loopback)
    r = _train(loopback, internal.url(path))
    print(f"\n{path}: {r.status_code} {r.text[:300]}")
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
    _no_secret(r.text, loopback.log())
    assert _raw(loopback) == before, "the refused download stayed in data/raw/"


class _LoopbackCountsAsPublic(SourcePolicy):
    """127.0.0.1 stands in for a public data server; every other address is judged as usual."""

    def check_address(self, ip: IPAddress) -> None:
        if ip != ipaddress.ip_address("127.0.0.1"):
            super().check_address(ip)


@contextlib.contextmanager
def _fake_dns(monkeypatch: pytest.MonkeyPatch, names: dict[str, str]) -> Iterator[None]:
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    yield


def test_load_data_redirect_to_name_resolving_private_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, internal: Internal
) -> None:
    internal.routes["/to-intranet"] = _redirect(f"http://intranet.example:{internal.port}/secret.env")
    policy = _LoopbackCountsAsPublic(frozenset({"data.example", "intranet.example"}), False, tmp_path)
    before = dict(internal.hits)
    dns = _fake_dns(monkeypatch, {"data.example": "127.0.0.1", "intranet.example": "10.0.0.7"})
    with dns, pytest.raises(DataSourceNotAllowedError) as err:
        load_data(f"http://data.example:{internal.port}/to-intranet", tmp_path / "raw", policy=policy)
    assert "private address" in str(err.value)
    assert internal.hits.get("/to-intranet", 0) == before.get("/to-intranet", 0) + 1
    assert internal.hits.get("/secret.env") == before.get("/secret.env")


def test_load_data_connection_landing_elsewhere_than_checked_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, internal: Internal
) -> None:
    """DNS rebinding: the name checked as public, the socket on loopback. Refused before a byte is sent."""
    real_connect = httpcore.SyncBackend.connect_tcp

    def rebound(self: Any, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        return real_connect(self, "127.0.0.1", internal.port, *args, **kwargs)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", rebound)
    policy = SourcePolicy(frozenset({"data.example"}), False, tmp_path)
    before = dict(internal.hits)
    dns = _fake_dns(monkeypatch, {"data.example": "93.184.216.34"})
    with dns, pytest.raises(DataSourceNotAllowedError) as err:
        load_data(f"http://data.example:{internal.port}/secret.env", tmp_path / "raw", policy=policy)
    assert "unexpected address" in str(err.value)
    assert internal.hits == before


def test_source_policy_allows_data_url_host_by_default_and_canonical_configured_hosts(tmp_path: Path) -> None:
    remote = make_settings(tmp_path, data_url="https://User:pw@Data.Example.:8443/d.csv?sig=1")
    assert source_policy(remote, remote.data_url) is None  # DATA_URL itself: trusted
    policy = source_policy(remote, "https://data.example/other.csv")
    assert policy is not None and policy.allowed_hosts == {"data.example"}
    bundled = source_policy(make_settings(tmp_path), "https://data.example/x.csv")
    assert bundled is not None and bundled.allowed_hosts == set()  # DATA_URL a local file: no host at all
    configured = make_settings(tmp_path, data_url_allowed_hosts="Mirror.Example., 2130706433,[::1]")
    assert configured.data_url_allowed_hosts == ["mirror.example", "127.0.0.1", "::1"]
    with pytest.raises(ValueError, match="DATA_URL_ALLOWED_HOSTS entry 2 is not a host name"):
        make_settings(tmp_path, data_url_allowed_hosts="ok.example,ex%61mple.com")


# --- finding 4: credentials in a data URL, host paths on open routes ----------------------------


@pytest.mark.integration
def test_train_credentials_in_data_url_never_stored_logged_or_shown(
    loopback: Service, internal: Internal
) -> None:
    marker = "Zq7Kx9"
    url = f"http://reader:pw-{marker}@127.0.0.1:{internal.port}/good.csv?token=tok-{marker}#frag-{marker}"
    with client(loopback) as c:
        r = c.post("/train", json={"data_url": url, "force": True})  # the same bytes as the bundled data
        assert r.status_code == 200, r.text
        assert r.json()["data_source"] == internal.url("/good.csv")
        version = r.json()["version"]
        assert c.post("/evaluate", json={"version": version}).json()["promoted"] is True
        assert c.post("/upload", json={"version": version}).status_code == 200
    texts = {
        f"GET {path}": httpx.get(loopback.url + path, timeout=30).text
        for path in ("/models", "/models/current")
    }
    texts["log"] = loopback.log()
    for path in [*loopback.results_dir.rglob("*.json"), *loopback.upload_dir.rglob("*.json")]:
        texts[str(path)] = path.read_text()
    url = registry_db_url(loopback.results_dir)
    for table in ("registry_versions", "registry_evaluations", "registry_leases", "registry_reference"):
        texts[f"table {table}"] = json.dumps(sql(url, f"SELECT * FROM {table}"), default=str)
    leaks = [name for name, text in texts.items() if marker in text]
    assert not leaks, f"credentials or query found in {leaks}"
    assert meta_of(loopback.results_dir, version)["data_source"] == internal.url("/good.csv")


@pytest.mark.integration
def test_open_routes_show_no_host_path(closed: Service) -> None:
    bodies = {path: httpx.get(closed.url + path, timeout=30).text for path in ("/models", "/models/current")}
    current = json.loads(bodies["/models/current"])
    assert current["metrics"]["data_source"] == "BreastCancer.csv (bundled)"
    for path, body in bodies.items():
        for needle in (str(ROOT), str(closed.workdir), "raw_file", "test_size"):
            assert needle not in body, f"GET {path} shows {needle!r}"
    # only the parent version of the training lineage is public; the raw file's path is not
    assert set(current["metrics"].get("lineage", {})) <= {"parent_version"}


# --- finding 5: malformed data_url values --------------------------------------------------------

MALFORMED = [
    ("http://[::1/x", "invalid IPv6 address"),
    ("http://127.0.0.1/a\x00b.csv", "U+0000"),
    ("/data/x\x00.csv", "U+0000"),
    ("http://h.example/x\r\nX-Injected: forged", "U+000D"),
    ("http://h.example/x\nX-Injected: forged", "U+000A"),
    ("http://" + "a" * 300 + ".example/x.csv", "label longer than 63 characters"),
    ("http://" + ".".join(["a" * 60] * 5) + "/x.csv", "longer than 253 characters"),
    ("\x01\x02\x7f", "U+0001"),
    ("http://h.example/\u202ex.csv", "U+202E"),
    ("http://h.example/\ud800.csv", "unicode"),
    ("file:///etc/passwd", "unsupported scheme"),
    ("gopher://h.example/x", "unsupported scheme"),
    ("http:///x.csv", "has no host"),
    ("http://h.example:99999/x.csv", "invalid port"),
    ("http://999.1.1.1/x.csv", "IPv4 address out of range"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("value", "words"), MALFORMED, ids=[f"case{i}" for i in range(len(MALFORMED))])
def test_train_malformed_data_url_422_naming_the_problem(closed: Service, value: str, words: str) -> None:
    with client(closed) as c:
        r = c.post(
            "/train", content=json.dumps({"data_url": value}), headers={"Content-Type": "application/json"}
        )
    print(f"\n{value[:40]!r}: {r.status_code} {r.text[:200]}")
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "data_url"] and words in error["msg"], r.text
    log = closed.log()
    assert "X-Injected" not in log and "Traceback" not in log, log[-2000:]


@pytest.mark.parametrize(
    ("value", "words"),
    [*MALFORMED[:9], ("http://h.example/\ud800.csv", "unpaired surrogate"), *MALFORMED[10:]],
)
def test_load_data_malformed_source_typed_error_for_the_cli(tmp_path: Path, value: str, words: str) -> None:
    with pytest.raises(DataSourceNotAllowedError) as err:  # a 422 in the service, exit 1 in the CLI
        load_data(value, tmp_path / "raw")
    assert words in str(err.value)
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


# --- finding 7: no download deadline, no row cap ------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/trickle-body.csv", "/trickle-headers.csv"])
def test_train_trickling_source_stops_at_deadline_and_frees_the_lock(
    loopback: Service, internal: Internal, path: str
) -> None:
    r = _train(loopback, internal.url(path))
    print(f"\n{path}: {r.status_code} in {r.elapsed.total_seconds():.1f}s: {r.text[:200]}")
    assert r.status_code == 502, r.text
    assert f"DOWNLOAD_DEADLINE_SECONDS={DEADLINE}" in r.json()["detail"]
    with Registry(loopback.results_dir).training_lock():  # raises TrainingInProgressError if still held
        pass


@pytest.mark.integration
def test_train_more_rows_than_max_data_rows_422_before_training(
    loopback: Service, internal: Internal
) -> None:
    before_raw, before_versions = _raw(loopback), len(httpx.get(loopback.url + "/models").json()["models"])
    r = _train(loopback, internal.url("/many-rows.csv"))
    assert r.status_code == 422, r.text
    assert f"more than MAX_DATA_ROWS={MAX_ROWS} rows" in r.json()["detail"]
    assert _raw(loopback) == before_raw
    assert len(httpx.get(loopback.url + "/models").json()["models"]) == before_versions


# --- finding 8: retention of downloads and backups ----------------------------------------------


def _age(path: Path, days_ago: float) -> None:
    stamp = path.stat().st_mtime - days_ago * 86400
    os.utime(path, (stamp, stamp))


@pytest.mark.integration
def test_train_prunes_raw_downloads_to_raw_retention_keeping_registered_ones(
    loopback: Service, internal: Internal
) -> None:
    raw = loopback.workdir / "data" / "raw"
    r = _train(loopback, internal.url("/reversed.csv"))  # a registered version on other bytes
    assert r.status_code == 200, r.text
    registered = raw / f"{r.json()['data_sha256']}.csv"
    _age(registered, 1000)  # the oldest file of all, but a version was trained on it
    stale = []
    for n in range(6):
        path = raw / f"{hashlib.sha256(str(n).encode()).hexdigest()}.csv"
        path.write_text(f"stale {n}\n")
        _age(path, 100 - n)  # stale[5] is the newest of them
        stale.append(path.name)
    with client(loopback) as c:
        assert c.post("/train").status_code == 200  # DATA_URL; RAW_RETENTION=3
    left = _raw(loopback)
    assert {registered.name, f"{BUNDLED_SHA256}.csv"} <= left
    assert left & set(stale) == {stale[4], stale[5]}, sorted(left)


@pytest.mark.integration
def test_upload_prunes_backups_to_backup_retention(loopback: Service) -> None:
    upload = loopback.upload_dir
    upload.mkdir(parents=True, exist_ok=True)
    old = [f"2020010{d}_000000" for d in range(1, 5)]
    for name in old:
        (upload / name).mkdir()
        (upload / name / "metrics.json").write_text("{}")
    version = train_and_promote(loopback)
    before = _backups(upload)
    with client(loopback) as c:
        r = c.post("/upload", json={"version": version})
    assert r.status_code == 200, r.text
    new = Path(r.json()["backup_dir"]).name
    assert _backups(upload) == sorted({*before, new})[-2:], before  # BACKUP_RETENTION=2, newest stamps
    assert new in _backups(upload) and not set(old[:3]) & set(_backups(upload))


def _backups(upload: Path) -> list[str]:
    return sorted(p.name for p in upload.iterdir() if not p.name.startswith(".tmp-"))
