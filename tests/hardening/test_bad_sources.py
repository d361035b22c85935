"""Bad data sources through POST /train: each gets a clear 4xx/502 and changes nothing that is served.

One service (MAX_DATA_BYTES=40000, HTTP_READ_TIMEOUT=1 s, DOWNLOAD_RETRIES=1) and one scripted HTTP data
source serve every case; the registry listing and the served model are compared before and after each.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BUNDLED_CSV, BUNDLED_SHA256, Service
from tests.hardening.conftest import (
    PREDICT_BODY,
    DataServer,
    Route,
    client,
    data_server,
    models,
    start_promoted,
)

pytestmark = pytest.mark.integration

MAX_DATA_BYTES = 40_000
HEADER = '"Id","Cl.thickness","Cell.size","Cell.shape","Marg.adhesion","Epith.c.size","Bare.nuclei",'
HEADER += '"Bl.cromatin","Normal.nucleoli","Mitoses","Class"\n'


def _routes() -> dict[str, Route]:
    lines = BUNDLED_CSV.read_text().splitlines(keepends=True)
    benign = [line for line in lines[1:] if line.rstrip().endswith(",0")]
    html = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>login</body></html>"
    return {
        "/good.csv": Route(BUNDLED_CSV.read_bytes()),
        "/wrong-columns.csv": Route(b"a,b,c\n1,2,3\n4,5,6\n"),
        "/garbage.csv": Route(
            (HEADER + "".join(f"{1000 + i}," + ",".join(["abc"] * 9) + ",0\n" for i in range(50))).encode()
        ),
        "/no-rows.csv": Route(HEADER.encode()),
        "/one-class.csv": Route((HEADER + "".join(benign)).encode()),
        "/page.html": Route(html, content_type="text/html; charset=utf-8"),
        "/html-as-csv.csv": Route(html, content_type="text/csv"),
        "/binary.csv": Route(bytes(range(256)) * 8, content_type="application/octet-stream"),
        "/empty.csv": Route(b""),
        "/too-big.csv": Route(BUNDLED_CSV.read_bytes() * 2),
        "/stall.csv": Route(BUNDLED_CSV.read_bytes(), stall_after_headers=5.0),
        "/stall-before-headers.csv": Route(BUNDLED_CSV.read_bytes(), delay_before=5.0),
        "/drop.csv": Route(drop=True),
        "/not-found.csv": Route(b"nope", status=404),
        "/server-error.csv": Route(b"boom", status=500),
    }


# (path or "local:<name>", expected status, words the detail must contain)
CASES = [
    ("/wrong-columns.csv", 422, ["expected exactly"]),
    ("/garbage.csv", 422, ["Cl.thickness", "non-numeric"]),
    ("/no-rows.csv", 422, ["no data rows"]),
    ("/one-class.csv", 422, ["single class"]),
    ("/page.html", 422, ["HTML"]),
    ("/html-as-csv.csv", 422, ["HTML"]),
    ("/binary.csv", 422, []),
    ("/empty.csv", 422, ["empty"]),
    ("/too-big.csv", 422, ["MAX_DATA_BYTES=40000"]),
    ("/stall.csv", 502, ["unreachable", "ReadTimeout"]),
    ("/stall-before-headers.csv", 502, ["unreachable", "ReadTimeout"]),
    ("/drop.csv", 502, ["unreachable"]),
    ("/not-found.csv", 502, ["HTTP 404"]),
    ("/server-error.csv", 502, ["HTTP 500"]),
    ("/unrouted-port", 502, ["unreachable"]),
    ("local:missing.csv", 502, ["not an existing file"]),
    ("local:too-big.csv", 422, ["MAX_DATA_BYTES=40000"]),
    ("outside:/etc/passwd", 422, ["outside DATA_DIR"]),
]


@pytest.fixture(scope="module")
def source() -> Iterator[DataServer]:
    with data_server(_routes()) as server:
        yield server


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, source: DataServer) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("bad-sources")
    svc, _ = start_promoted(
        workdir / "svc",
        source.url("/good.csv"),
        extra_env={
            "MAX_DATA_BYTES": str(MAX_DATA_BYTES),
            "HTTP_READ_TIMEOUT": "1",
            "HTTP_CONNECT_TIMEOUT": "1",
            "DOWNLOAD_RETRIES": "1",
            "DATA_URL_ALLOW_PRIVATE_NETWORKS": "true",  # the bad sources are overrides on loopback
        },
    )
    data_dir = Path(svc.env["DATA_DIR"])  # a local data_url given to /train must live under DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "too-big.csv").write_bytes(BUNDLED_CSV.read_bytes() * 2)
    try:
        yield svc
    finally:
        svc.stop()


def _state(service: Service) -> tuple[object, object, object]:
    ready = httpx.get(service.url + "/ready", timeout=10).json()
    predict = httpx.post(service.url + "/predict", json=PREDICT_BODY, timeout=10).json()
    predict.pop("prediction_id")  # each answer is recorded under a new id; the answer itself must not change
    return models(service), ready, predict


@pytest.mark.parametrize(("path", "status", "words"), CASES, ids=[c[0].strip("/") for c in CASES])
def test_train_bad_source_clear_error_and_nothing_changes(
    service: Service, source: DataServer, path: str, status: int, words: list[str]
) -> None:
    if path.startswith("outside:"):
        url = path.removeprefix("outside:")
    elif path.startswith("local:"):
        url = str(Path(service.env["DATA_DIR"]) / path.removeprefix("local:"))
    elif path == "/unrouted-port":
        from tests.conftest import free_port

        url = f"http://127.0.0.1:{free_port()}/x.csv"
    else:
        url = source.url(path)
    before = _state(service)
    with client(service) as c:
        r = c.post("/train", json={"data_url": url})
    print(f"\nbad source {path}: {r.status_code} in {r.elapsed.total_seconds():.2f}s: {r.text[:160]}")
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail, r.text
    for word in words:
        assert word in detail, detail
    assert _state(service) == before, "the registry or the served model changed"
    # a failed download leaves no partial file, and a refused one is deleted: only the served version's data
    raw = {p.name for p in (service.workdir / "data" / "raw").iterdir()}
    assert raw == {f"{BUNDLED_SHA256}.csv"}, f"downloads left behind: {raw}"
    assert "Traceback" not in service.log(), service.log()[-3000:]


def test_train_good_source_after_bad_ones_still_works(service: Service, source: DataServer) -> None:
    with client(service) as c:
        r = c.post("/train", json={"data_url": source.url("/good.csv")})
    assert r.status_code == 200 and r.json()["rows"]["raw"] == 699, r.text
