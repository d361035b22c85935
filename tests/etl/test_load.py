"""etl.load: local paths and real local HTTP servers (errors, size caps, retries, timeouts)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from etl.errors import DataFormatError, DataSourceError
from etl.load import load_data
from etl.settings import BUNDLED_DATA_PATH, Settings
from tests.conftest import BUNDLED_CSV, BUNDLED_SHA256, ROOT, free_port, static_server

FAST = {"connect_timeout": 2.0, "read_timeout": 2.0, "backoff_seconds": 0.01}


def test_bundled_dataset_is_the_published_file_and_the_default_source():
    assert BUNDLED_DATA_PATH == BUNDLED_CSV
    assert BUNDLED_DATA_PATH.is_relative_to(ROOT)
    assert hashlib.sha256(BUNDLED_CSV.read_bytes()).hexdigest() == BUNDLED_SHA256
    assert Settings(_env_file=None).data_url == str(BUNDLED_DATA_PATH)  # type: ignore[call-arg]
    # DATA_URL= (empty, as .env.example and compose leave it) also means the bundled copy
    assert Settings(_env_file=None, data_url="").data_url == str(BUNDLED_DATA_PATH)  # type: ignore[call-arg]


def _assert_only(raw_dir: Path, names: set[str]) -> None:
    assert {p.name for p in raw_dir.iterdir()} == names


class _Server:
    """A tiny scripted HTTP server: ``routes[path](handler)`` answers; ``hits[path]`` counts requests."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]] = {}
        self.hits: dict[str, int] = {}
        self.release = threading.Event()
        self.url = ""


@contextlib.contextmanager
def scripted_server() -> Iterator[_Server]:
    state = _Server()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits[self.path] = state.hits.get(self.path, 0) + 1
            state.routes[self.path](self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    # shutdown() waits for the loop to look at its flag: every 0.05 s rather than the default 0.5 s
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


def _reply(status: int, body: bytes, ctype: str = "text/csv", length: bool = True):
    def answer(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        if length:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return answer


# --- local paths --------------------------------------------------------------------------------


def test_load_data_local_path_stores_content_addressed_copy(tmp_path: Path, bundled_csv: Path):
    raw_dir = tmp_path / "raw"

    result = load_data(str(bundled_csv), raw_dir)

    assert result.sha256 == BUNDLED_SHA256
    assert result.path == raw_dir / f"{BUNDLED_SHA256}.csv"
    assert result.path.read_bytes() == bundled_csv.read_bytes()
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == BUNDLED_SHA256
    assert result.size_bytes == bundled_csv.stat().st_size
    assert result.source == "BreastCancer.csv (bundled)"  # never an absolute host path (display_source)
    _assert_only(raw_dir, {f"{BUNDLED_SHA256}.csv"})  # no .tmp- leftovers


def test_load_data_same_source_twice_is_idempotent(tmp_path: Path, bundled_csv: Path):
    raw_dir = tmp_path / "raw"
    first = load_data(str(bundled_csv), raw_dir)
    second = load_data(str(bundled_csv), raw_dir)
    assert first.path == second.path and first.sha256 == second.sha256
    _assert_only(raw_dir, {f"{BUNDLED_SHA256}.csv"})


def test_load_data_missing_local_file_raises_source_error(tmp_path: Path):
    missing = tmp_path / "nope.csv"
    raw_dir = tmp_path / "raw"
    with pytest.raises(DataSourceError) as err:
        load_data(str(missing), raw_dir)
    assert "nope.csv (local file)" in str(err.value) and "DATA_URL" in str(err.value)
    assert str(tmp_path) not in str(err.value)  # a file name, never the host's folders
    _assert_only(raw_dir, set())


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "empty"), (b"  \n\n", "empty"), (b"<!DOCTYPE html><html><body>hi</body></html>", "HTML")],
)
def test_load_data_local_unusable_file_raises_format_error(tmp_path: Path, content: bytes, expected: str):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    raw_dir = tmp_path / "raw"
    with pytest.raises(DataFormatError) as err:
        load_data(str(path), raw_dir)
    assert (
        expected in str(err.value)
        and "bad.csv (local file)" in str(err.value)
        and "DATA_URL" in str(err.value)
    )
    _assert_only(raw_dir, set())


def test_load_data_local_file_over_cap_raises_format_error(tmp_path: Path, bundled_csv: Path):
    raw_dir = tmp_path / "raw"
    with pytest.raises(DataFormatError) as err:
        load_data(str(bundled_csv), raw_dir, max_bytes=1000)
    assert "MAX_DATA_BYTES=1000" in str(err.value) and "BreastCancer.csv (bundled)" in str(err.value)
    _assert_only(raw_dir, set())


# --- HTTP ---------------------------------------------------------------------------------------


def test_load_data_http_ok_matches_shared_file(tmp_path: Path, csv_url: str, bundled_csv: Path):
    result = load_data(csv_url, tmp_path / "raw", **FAST)
    assert result.sha256 == BUNDLED_SHA256
    assert result.path.read_bytes() == bundled_csv.read_bytes()
    assert result.source == csv_url
    _assert_only(tmp_path / "raw", {f"{BUNDLED_SHA256}.csv"})


def test_load_data_http_404_raises_source_error_without_retry(tmp_path: Path):
    with scripted_server() as srv:
        srv.routes["/gone.csv"] = _reply(404, b"not found", "text/plain")
        url = srv.url + "/gone.csv"
        with pytest.raises(DataSourceError) as err:
            load_data(url, tmp_path / "raw", retries=3, **FAST)
        assert srv.hits["/gone.csv"] == 1  # a 404 is not transient
    message = str(err.value)
    assert url in message and "HTTP 404" in message and "DATA_URL" in message
    _assert_only(tmp_path / "raw", set())


def test_load_data_static_server_404_raises_source_error(tmp_path: Path):
    (tmp_path / "www").mkdir()
    with static_server(tmp_path / "www") as base, pytest.raises(DataSourceError) as err:
        load_data(f"{base}/missing.csv", tmp_path / "raw", retries=0, **FAST)
    assert f"{base}/missing.csv" in str(err.value) and "DATA_URL" in str(err.value)


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("text/html; charset=utf-8", b"<html><body>Sign in</body></html>"),
        ("text/plain", b"\n  <!DOCTYPE html>\n<html><head></head></html>"),  # mislabelled HTML is sniffed
        ("text/csv", b"<html><body>oops</body></html>"),
    ],
)
def test_load_data_http_html_page_raises_format_error(tmp_path: Path, ctype: str, body: bytes):
    with scripted_server() as srv:
        srv.routes["/data.csv"] = _reply(200, body, ctype)
        url = srv.url + "/data.csv"
        with pytest.raises(DataFormatError) as err:
            load_data(url, tmp_path / "raw", **FAST)
    assert "HTML" in str(err.value) and url in str(err.value) and "DATA_URL" in str(err.value)
    _assert_only(tmp_path / "raw", set())


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "streamed"])
def test_load_data_http_oversized_raises_format_error(tmp_path: Path, declare_length: bool):
    body = b"Id,Class\n" + b"1,0\n" * 5000  # ~20 kB against a 4 kB cap
    with scripted_server() as srv:
        srv.routes["/big.csv"] = _reply(200, body, "text/csv", length=declare_length)
        url = srv.url + "/big.csv"
        with pytest.raises(DataFormatError) as err:
            load_data(url, tmp_path / "raw", max_bytes=4096, **FAST)
    assert "MAX_DATA_BYTES=4096" in str(err.value) and url in str(err.value)
    _assert_only(tmp_path / "raw", set())


def test_load_data_http_under_cap_without_length_succeeds(tmp_path: Path, bundled_csv: Path):
    data = bundled_csv.read_bytes()
    with scripted_server() as srv:
        srv.routes["/d.csv"] = _reply(200, data, "text/csv", length=False)
        result = load_data(srv.url + "/d.csv", tmp_path / "raw", max_bytes=len(data), **FAST)
    assert result.sha256 == BUNDLED_SHA256


def test_load_data_http_transient_503_then_200_succeeds_after_retries(tmp_path: Path, bundled_csv: Path):
    data = bundled_csv.read_bytes()
    with scripted_server() as srv:

        def flaky(h: http.server.BaseHTTPRequestHandler) -> None:
            if srv.hits["/d.csv"] <= 2:
                _reply(503, b"busy", "text/plain")(h)
            else:
                _reply(200, data)(h)

        srv.routes["/d.csv"] = flaky
        result = load_data(srv.url + "/d.csv", tmp_path / "raw", retries=3, **FAST)
        hits = srv.hits["/d.csv"]
    assert hits == 3
    assert result.sha256 == BUNDLED_SHA256
    _assert_only(tmp_path / "raw", {f"{BUNDLED_SHA256}.csv"})


def test_load_data_http_persistent_503_gives_up_after_retries(tmp_path: Path):
    with scripted_server() as srv:
        srv.routes["/d.csv"] = _reply(503, b"busy", "text/plain")
        url = srv.url + "/d.csv"
        with pytest.raises(DataSourceError) as err:
            load_data(url, tmp_path / "raw", retries=2, **FAST)
        hits = srv.hits["/d.csv"]
    assert hits == 3  # one attempt + two retries
    assert "HTTP 503" in str(err.value) and url in str(err.value) and "DATA_URL" in str(err.value)


def test_load_data_unreachable_port_raises_source_error(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}/BreastCancer.csv"
    with pytest.raises(DataSourceError) as err:
        load_data(url, tmp_path / "raw", retries=1, **FAST)
    message = str(err.value)
    assert url in message and "unreachable after 2 attempt(s)" in message and "DATA_URL" in message
    _assert_only(tmp_path / "raw", set())


def test_load_data_stalled_server_times_out_as_source_error(tmp_path: Path):
    with scripted_server() as srv:

        def stall(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", "text/csv")
            h.send_header("Content-Length", "100")
            h.end_headers()
            h.wfile.write(b"Id,")
            h.wfile.flush()
            srv.release.wait(30)  # never sends the rest while the client waits

        srv.routes["/slow.csv"] = stall
        url = srv.url + "/slow.csv"
        with pytest.raises(DataSourceError) as err:
            load_data(url, tmp_path / "raw", connect_timeout=2.0, read_timeout=0.3, retries=1)
        hits = srv.hits["/slow.csv"]
    assert hits == 2  # a timeout is transient: retried once
    assert url in str(err.value) and "Timeout" in str(err.value) and "DATA_URL" in str(err.value)
    _assert_only(tmp_path / "raw", set())
