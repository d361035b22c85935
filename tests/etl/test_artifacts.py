"""etl.artifacts: create-only, atomic storage of version files in a local folder and in S3.

Every behaviour test runs against the local folder and against moto's S3 server on loopback (the ``s3``
cases are marked ``integration``; tests/s3_server.py). Interrupted writes are a ``kill -9`` of a writer
process stopped at the worst moment, and an exception injected there. The race of two writers runs on the
local folder only: moto's conditional writes are not atomic (the registry's race tests use the database).
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etl import atomic
from etl.artifacts import ArtifactStore, check_key, parse_url
from etl.errors import (
    ArtifactExistsError,
    ArtifactIntegrityError,
    ArtifactNotFoundError,
    ArtifactStoreError,
    StorageError,
)
from etl.hashing import sha256_bytes
from etl.retry import RetryPolicy
from etl.settings import Settings, SettingsError, load_settings
from tests.conftest import ROOT, free_port
from tests.s3_server import S3Server, run_s3_server
from tests.waiting import wait_until

PART = 5 * 2**20  # the smallest multipart part S3 accepts
MODEL = "v1/model.joblib"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's server, started once for the module; each test uses its own prefix in the bucket."""
    with run_s3_server(tmp_path_factory.mktemp("moto")) as server, pytest.MonkeyPatch.context() as env:
        for name, value in server.env.items():
            env.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            env.delenv(name, raising=False)
        yield server


def _url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """The store URL and endpoint of this test's backend: a fresh folder, or a fresh prefix in the bucket."""
    if request.param == "local":
        return str(tmp_path / "models"), ""
    server: S3Server = request.getfixturevalue("s3")
    return f"s3://{server.bucket}/{uuid.uuid4().hex}/models", server.endpoint


BACKENDS = ["local", pytest.param("s3", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    url, endpoint = _url(request, tmp_path)
    return ArtifactStore(url, endpoint_url=endpoint, part_bytes=PART, retry=RetryPolicy(base_seconds=0.01))


def _is_s3(store: ArtifactStore) -> bool:
    return store.location.startswith("s3://")


def _uploads(server: S3Server, store: ArtifactStore) -> list[dict[str, Any]]:
    """The multipart uploads under the store's prefix that were started and neither completed nor aborted."""
    prefix = store.location.removeprefix(f"s3://{server.bucket}/") + "/"
    found = server.client().list_multipart_uploads(Bucket=server.bucket, Prefix=prefix)
    return list(found.get("Uploads", []))


def _parts(server: S3Server, upload: dict[str, Any]) -> list[int]:
    listed = server.client().list_parts(Bucket=server.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return [part["PartNumber"] for part in listed.get("Parts", [])]


# -- behaviours, on both backends ----------------------------------------------------------------------
def test_artifact_store_put_new_then_reads_give_the_same_bytes(store: ArtifactStore, tmp_path: Path):
    data = os.urandom(20_000)  # about the size of model.joblib
    digest = store.put_new(MODEL, data)
    assert digest == sha256_bytes(data)
    assert store.get(MODEL) == data == store.get(MODEL, sha256=digest)
    assert store.sha256(MODEL) == digest
    assert store.exists(MODEL) is True
    assert store.get_file(MODEL, tmp_path / "out" / "model.joblib", sha256=digest) == digest
    assert (tmp_path / "out" / "model.joblib").read_bytes() == data


def test_artifact_store_put_new_refuses_an_existing_key_and_keeps_it(store: ArtifactStore):
    store.put_new(MODEL, b"first")
    with pytest.raises(ArtifactExistsError, match=r"v1/model\.joblib exists") as caught:
        store.put_new(MODEL, b"second")
    assert caught.value.step == "put_new v1/model.joblib"
    assert isinstance(caught.value, StorageError)
    assert store.get(MODEL) == b"first"
    assert store.list() == [MODEL]


def test_artifact_store_put_new_file_streams_a_large_file_once(store: ArtifactStore, tmp_path: Path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(2 * PART + 12345))  # three parts on S3
    digest = store.put_new_file("v1/big.bin", source)
    assert store.sha256("v1/big.bin") == digest == sha256_bytes(source.read_bytes())
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(2 * PART + 1))
    with pytest.raises(ArtifactExistsError):
        store.put_new_file("v1/big.bin", other)  # on S3: refused when completing the multipart upload
    assert store.sha256("v1/big.bin") == digest


def test_artifact_store_list_matches_whole_folder_names(store: ArtifactStore):
    for key in ("v1/meta.json", "v1/plots/roc.png", "v10/meta.json", "v2/meta.json"):
        store.put_new(key, key.encode())
    assert store.list("v1") == ["v1/meta.json", "v1/plots/roc.png"]
    assert store.list("v1/plots") == ["v1/plots/roc.png"]
    assert store.list() == ["v1/meta.json", "v1/plots/roc.png", "v10/meta.json", "v2/meta.json"]
    assert store.list("v3") == []
    assert store.exists("v1") is False  # a folder of keys is not an object


def test_artifact_store_delete_prefix_removes_one_folder_only(store: ArtifactStore):
    for key in ("v1/meta.json", "v1/plots/roc.png", "v10/meta.json"):
        store.put_new(key, b"x")
    assert store.delete_prefix("v1") == 2
    assert store.list() == ["v10/meta.json"]
    assert store.delete_prefix("v1") == 0
    store.put_new("v1/meta.json", b"again")  # the key is free once its garbage is gone
    assert store.get("v1/meta.json") == b"again"


def test_artifact_store_missing_key_is_not_found(store: ArtifactStore, tmp_path: Path):
    assert store.exists(MODEL) is False
    for read in (store.get, store.sha256, lambda key: store.get_file(key, tmp_path / "x")):
        with pytest.raises(ArtifactNotFoundError, match=r"no artifact v1/model\.joblib"):
            read(MODEL)
    assert not (tmp_path / "x").exists()


def test_artifact_store_wrong_sha256_is_refused_and_dest_kept(store: ArtifactStore, tmp_path: Path):
    store.put_new(MODEL, b"tampered")
    dest = tmp_path / "served" / "model.joblib"
    dest.parent.mkdir()
    dest.write_bytes(b"served")
    expected = sha256_bytes(b"original")
    with pytest.raises(ArtifactIntegrityError, match="does not match"):
        store.get(MODEL, sha256=expected)
    with pytest.raises(ArtifactIntegrityError):
        store.get_file(MODEL, dest, sha256=expected)
    assert dest.read_bytes() == b"served"
    assert [p.name for p in dest.parent.iterdir()] == ["model.joblib"]  # no temporary left


# -- keys and URLs -------------------------------------------------------------------------------------
BAD_KEY_MESSAGE = (
    "an artifact key is a relative path of names made of letters, digits, '.', '_' and '-', each starting "
    "with a letter or digit"
)
BAD_KEYS = ["", "/etc/passwd", "../x", "v1/../../x", "v1//a", "v1/", ".tmp-v1/a", "v1/.hidden", "a\\b", "a b"]


@pytest.mark.parametrize("key", [*BAD_KEYS, "x" * 1025, "v1/\x00", "v1/é"])
def test_artifact_store_bad_key_is_refused_before_any_io(tmp_path: Path, key: str):
    store = ArtifactStore(str(tmp_path / "models"))
    for call in (lambda: store.put_new(key, b"x"), lambda: store.get(key), lambda: store.delete_prefix(key)):
        with pytest.raises(ValueError) as caught:
            call()
        assert str(caught.value) == BAD_KEY_MESSAGE  # the key itself is not repeated
    assert not (tmp_path / "models").exists()
    assert check_key("v1/plots/roc_curve.png") == "v1/plots/roc_curve.png"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("results/models", ("file", "results/models")),
        ("file:///srv/models", ("file", "/srv/models")),
        ("s3://ml-artifacts", ("s3", "ml-artifacts")),
        ("s3://ml-artifacts/prod/models/", ("s3", "ml-artifacts/prod/models")),
    ],
)
def test_artifact_parse_url_accepts_folders_and_s3(url: str, expected: tuple[str, str]):
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("gs://bucket/models", "s3://bucket/prefix only"),
        ("http://example.org/models", "s3://bucket/prefix only"),
        ("file://otherhost/models", "folder on this machine"),
        ("s3://AKIAXXXX:s3cr3t-value@bucket/models", "must not hold credentials"),
        ("s3://Bad_Bucket/models", "lower-case bucket"),
        ("s3://bucket/models?x=1", "no query"),
        ("s3://bucket/../models", "relative path of names"),
    ],
)
def test_artifact_url_setting_rejects_bad_urls_without_echoing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, problem: str
):
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("ARTIFACT_URL", url)
    with pytest.raises(SettingsError, match="ARTIFACT_URL") as caught:
        load_settings(Settings)
    assert problem in str(caught.value)
    assert "s3cr3t-value" not in str(caught.value)


def test_artifact_settings_default_to_the_results_models_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    for name in ("ARTIFACT_URL", "ARTIFACT_ENDPOINT_URL", "RESULTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(Settings)
    assert settings.artifact_location == str(Path("results") / "models")
    moved = settings.model_copy(update={"results_dir": tmp_path / "elsewhere"})
    assert moved.artifact_location == str(tmp_path / "elsewhere" / "models")
    monkeypatch.setenv("ARTIFACT_URL", "s3://ml-artifacts/models")
    monkeypatch.setenv("ARTIFACT_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert load_settings(Settings).artifact_location == "s3://ml-artifacts/models"
    monkeypatch.setenv("ARTIFACT_ENDPOINT_URL", "ftp://user:pw@minio")
    with pytest.raises(SettingsError, match="ARTIFACT_ENDPOINT_URL: must be an http") as caught:
        load_settings(Settings)
    assert "pw" not in str(caught.value)


# -- local folder: atomicity, interruption, races ---------------------------------------------------------
def test_artifact_store_local_files_appear_whole_with_nothing_beside_them(tmp_path: Path):
    store = ArtifactStore(f"file://{tmp_path}/models")
    store.put_new("v1/plots/roc.png", b"png")
    assert (tmp_path / "models" / "v1" / "plots" / "roc.png").read_bytes() == b"png"
    assert [p.name for p in (tmp_path / "models" / "v1" / "plots").iterdir()] == ["roc.png"]


def test_artifact_store_local_failed_publish_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def disk_full(tmp: Path, dest: Path) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))

    store = ArtifactStore(str(tmp_path / "models"))
    monkeypatch.setattr(atomic, "publish_new_file", disk_full)
    with pytest.raises(
        ArtifactStoreError, match=r"put_new v1/model\.joblib failed: OSError \[ENOSPC\]"
    ) as caught:
        store.put_new(MODEL, b"x" * 20_000)
    assert str(tmp_path) not in str(caught.value)  # no host path in a message
    assert list((tmp_path / "models" / "v1").iterdir()) == []
    assert store.exists(MODEL) is False


_LOCAL_WRITER = """
import os, sys, threading
from pathlib import Path
from etl.artifacts import ArtifactStore

def stuck_link(src, dst, *args, **kwargs):
    Path(sys.argv[2]).write_text("the bytes are written and flushed; publishing now")
    threading.Event().wait()  # killed here

os.link = stuck_link
ArtifactStore(sys.argv[1]).put_new("v1/model.joblib", os.urandom(20_000))
"""


def test_artifact_store_local_writer_killed_before_publishing_leaves_no_key(tmp_path: Path):
    root, marker = tmp_path / "models", tmp_path / "marker"
    writer = subprocess.Popen([sys.executable, "-c", _LOCAL_WRITER, str(root), str(marker)], cwd=ROOT)
    try:
        wait_until(lambda: marker.exists() or writer.poll() is not None, 60, "the writer to reach os.link")
        assert writer.poll() is None, "the writer exited before it was killed"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    leftovers = [p.name for p in (root / "v1").iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(atomic.TMP_PREFIX)  # the write was under way
    store = ArtifactStore(str(root))
    assert store.exists(MODEL) is False
    assert store.list() == []
    store.put_new(MODEL, b"retried")  # a leftover never blocks the key
    assert store.get(MODEL) == b"retried"
    assert store.delete_prefix("v1") == 1
    assert list(root.iterdir()) == []  # the leftover went with its folder


def _race_writer(url: str, name: str, rounds: int, barrier: Any, results: Any) -> None:
    store = ArtifactStore(url)
    for i in range(rounds):
        barrier.wait(60)
        try:
            store.put_new(f"race/{i}", f"{name}:{i}".encode() * 1000)
            results.put((i, name))
        except ArtifactExistsError:
            pass
    results.put((-1, name))


def test_artifact_store_local_race_of_two_processes_has_one_winner_per_key(tmp_path: Path):
    rounds, url = 40, str(tmp_path / "models")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    writers = [ctx.Process(target=_race_writer, args=(url, n, rounds, barrier, results)) for n in ("a", "b")]
    for writer in writers:
        writer.start()
    wins: dict[int, list[str]] = {}
    finished = 0
    while finished < 2:
        i, name = results.get(timeout=120)
        finished += i < 0
        if i >= 0:
            wins.setdefault(i, []).append(name)
    for writer in writers:
        writer.join(30)
        assert writer.exitcode == 0
    assert {i: len(names) for i, names in wins.items()} == dict.fromkeys(range(rounds), 1)
    store = ArtifactStore(url)
    for i, (winner,) in wins.items():
        assert store.get(f"race/{i}") == f"{winner}:{i}".encode() * 1000
    print(f"{rounds} races: a won {sum(n == ['a'] for n in wins.values())}, b won the rest")


# -- S3 (moto's server): interruption, retries, fallbacks, credentials -----------------------------------
_S3_WRITER = """
import asyncio, sys
from pathlib import Path
import s3fs
from etl.artifacts import ArtifactStore

url, endpoint, source, marker = sys.argv[1:5]
real_call = s3fs.S3FileSystem._call_s3

async def call(self, method, *args, **kwargs):
    if method == "upload_part" and kwargs.get("PartNumber") == 2:
        Path(marker).write_text("part 1 is stored; sending part 2")
        await asyncio.Event().wait()  # killed here
    return await real_call(self, method, *args, **kwargs)

s3fs.S3FileSystem._call_s3 = call
ArtifactStore(url, endpoint_url=endpoint, part_bytes=5 * 2**20).put_new_file("v1/model.joblib", Path(source))
"""


@pytest.mark.integration
def test_artifact_store_s3_writer_killed_mid_upload_leaves_no_key(s3: S3Server, tmp_path: Path):
    url = f"s3://{s3.bucket}/{uuid.uuid4().hex}"
    source, marker = tmp_path / "model.bin", tmp_path / "marker"
    source.write_bytes(os.urandom(2 * PART + 1))
    argv = [sys.executable, "-c", _S3_WRITER, url, s3.endpoint, str(source), str(marker)]
    writer = subprocess.Popen(argv, cwd=ROOT)
    store = ArtifactStore(url, endpoint_url=s3.endpoint)
    try:
        wait_until(lambda: marker.exists() or writer.poll() is not None, 60, "the writer to send part 2")
        assert writer.poll() is None, "the writer exited before it was killed"
        (upload,) = _uploads(s3, store)
        stored = wait_until(lambda: _parts(s3, upload), 60, "a part of the upload to be stored")
        assert 2 not in stored  # parts go up concurrently; part 2 never will
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    assert store.exists(MODEL) is False
    assert store.list() == []
    assert store.delete_prefix("v1") == 0
    assert _uploads(s3, store) == []  # the stored part is gone too


@pytest.mark.integration
def test_artifact_store_s3_failed_part_aborts_the_upload(s3: S3Server, tmp_path: Path):
    store = ArtifactStore(f"s3://{s3.bucket}/{uuid.uuid4().hex}", endpoint_url=s3.endpoint, part_bytes=PART)
    fs = store._backend.fs  # type: ignore[union-attr]
    real_call = fs._call_s3

    async def refuse_part_2(method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "upload_part" and kwargs.get("PartNumber") == 2:
            raise PermissionError(errno.EACCES, "Access Denied")
        return await real_call(method, *args, **kwargs)

    fs._call_s3 = refuse_part_2
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(2 * PART + 1))
    with pytest.raises(ArtifactStoreError, match=r"put_new_file v1/model\.joblib failed: PermissionError"):
        store.put_new_file(MODEL, source)
    fs._call_s3 = real_call
    assert store.exists(MODEL) is False
    assert _uploads(s3, store) == []


@pytest.mark.integration
def test_artifact_store_s3_retry_after_a_lost_answer_is_not_a_conflict(s3: S3Server):
    store = ArtifactStore(
        f"s3://{s3.bucket}/{uuid.uuid4().hex}", endpoint_url=s3.endpoint, retry=RetryPolicy(base_seconds=0.01)
    )
    fs = store._backend.fs  # type: ignore[union-attr]
    real_pipe = fs.pipe_file
    lost = []

    def stored_but_timed_out(*args: Any, **kwargs: Any) -> Any:
        real_pipe(*args, **kwargs)
        if not lost:
            lost.append(1)
            raise TimeoutError("read timed out")  # the PUT landed; its answer did not

    fs.pipe_file = stored_but_timed_out
    assert store.put_new(MODEL, b"mine") == sha256_bytes(b"mine")
    assert store.get(MODEL) == b"mine"

    def timed_out_while_another_wrote(path: str, *args: Any, **kwargs: Any) -> Any:
        if not lost:
            lost.append(1)
            real_pipe(path, b"theirs", mode="create")  # another writer got in meanwhile
            raise TimeoutError("read timed out")
        return real_pipe(path, *args, **kwargs)

    lost.clear()
    fs.pipe_file = timed_out_while_another_wrote
    with pytest.raises(ArtifactExistsError):
        store.put_new("v1/meta.json", b"mine")
    assert store.get("v1/meta.json") == b"theirs"


@pytest.mark.integration
def test_artifact_store_s3_without_conditional_writes_checks_first(
    s3: S3Server, caplog: pytest.LogCaptureFixture
):
    store = ArtifactStore(f"s3://{s3.bucket}/{uuid.uuid4().hex}", endpoint_url=s3.endpoint)
    fs = store._backend.fs  # type: ignore[union-attr]
    real_pipe = fs.pipe_file

    def no_conditions(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("mode") == "create":
            raise OSError(errno.ENOSYS, "A header you provided implies functionality that is not implemented")
        return real_pipe(*args, **kwargs)

    fs.pipe_file = no_conditions
    store.put_new(MODEL, b"first")
    with pytest.raises(ArtifactExistsError):
        store.put_new(MODEL, b"second")
    assert store.get(MODEL) == b"first"
    assert "does not support conditional writes" in caplog.text


@pytest.mark.integration
def test_artifact_store_s3_unreachable_names_the_step_and_no_secret(s3: S3Server, tmp_path: Path):
    closed = f"http://127.0.0.1:{free_port()}"  # bound and released: nothing listens
    store = ArtifactStore(
        f"s3://{s3.bucket}/models", endpoint_url=closed, retry=RetryPolicy(2, base_seconds=0.01)
    )
    with pytest.raises(ArtifactStoreError) as caught:
        store.put_new(MODEL, b"x")
    message = str(caught.value)
    assert message == (
        f"s3://{s3.bucket}/models: put_new v1/model.joblib failed: EndpointConnectionError, after 2 retries"
    )
    assert caught.value.retries == 2
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in message and s3.env["AWS_ACCESS_KEY_ID"] not in message


_LOGGING_CLIENT = """
import sys
from etl.artifacts import ArtifactStore
from etl.errors import ArtifactStoreError
from etl.logger import setup_logging

setup_logging("DEBUG")
store = ArtifactStore(sys.argv[1], endpoint_url=sys.argv[2])
store.put_new("v1/model.joblib", b"x")
store.get("v1/model.joblib")
store.list("v1")
for call in (lambda: store.put_new("v1/model.joblib", b"y"), lambda: store.get("v2/none")):
    try:
        call()
    except ArtifactStoreError as exc:
        print(exc, file=sys.stderr)
"""


@pytest.mark.integration
def test_artifact_store_s3_debug_log_holds_no_credentials(s3: S3Server):
    url = f"s3://{s3.bucket}/{uuid.uuid4().hex}"
    run = subprocess.run(
        [sys.executable, "-c", _LOGGING_CLIENT, url, s3.endpoint],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "exists and was left unchanged" in run.stderr and "no artifact v2/none" in run.stderr
    assert "DEBUG etl.artifacts: artifact store: put_new v1/model.joblib" in run.stderr  # the log was live
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in run.stderr
    assert s3.env["AWS_ACCESS_KEY_ID"] not in run.stderr


@pytest.mark.integration
def test_artifact_store_s3_endpoint_from_the_aws_environment(s3: S3Server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    store = ArtifactStore(f"s3://{s3.bucket}/{uuid.uuid4().hex}")
    store.put_new(MODEL, b"x")
    assert store.list() == [MODEL]
