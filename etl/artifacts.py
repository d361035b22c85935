"""The artifact store: each model version's files, written once and never changed, in a local folder or in
S3-compatible object storage, chosen by one URL (``ARTIFACT_URL``; docs/replicas.md).

Keys are relative paths of plain names (``v3/model.joblib``). Writes are create-only: a key that exists is
refused, and an interrupted write leaves nothing under its key. In a local folder a file is written under a
temporary name, flushed and linked into place (etl/atomic.py); on S3 one PUT, or a multipart upload completed
as one, with the condition ``If-None-Match: *``. S3 calls are retried under one :class:`RetryPolicy`;
credentials and the endpoint come from the environment the usual AWS way and are never in a message.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Callable
from io import BufferedIOBase
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from etl import atomic
from etl.errors import ArtifactExistsError, ArtifactIntegrityError, ArtifactNotFoundError, ArtifactStoreError
from etl.hashing import sha256_bytes, sha256_file, sha256_stream
from etl.retry import Retrier, RetriesExhausted, RetryPolicy

if TYPE_CHECKING:
    from etl.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# one name of a key: starts with a letter or digit, so never ".", "..", nor a ".tmp-" leftover (etl/atomic.py)
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_KEY = 1024
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
DEFAULT_PART_BYTES = 64 * 2**20  # multipart uploads to S3: at least 5 MiB a part, but the last


def parse_url(url: str) -> tuple[str, str]:
    """Split an ``ARTIFACT_URL`` into ``("file", folder)`` or ``("s3", "bucket/prefix")``.

    Raises:
        ValueError: another scheme, a ``file://`` URL naming a host, a bad bucket or prefix, or credentials in
            the URL (the message does not repeat the URL).
    """
    text = url.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        if scheme == "file" and parts.netloc not in ("", "localhost"):
            raise ValueError("a file:// URL names a folder on this machine: file:///absolute/path")
        folder = unquote(parts.path) if scheme == "file" else text
        if not folder:
            raise ValueError("is empty: give a folder, file:///absolute/path or s3://bucket/prefix")
        return "file", folder
    if scheme != "s3":
        raise ValueError("supports a local folder, file:///absolute/path and s3://bucket/prefix only")
    if "@" in parts.netloc:
        raise ValueError("must not hold credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
    if not _BUCKET.fullmatch(parts.netloc) or parts.query or parts.fragment:
        raise ValueError("needs the form s3://bucket/prefix (a lower-case bucket name, no query)")
    prefix = parts.path.strip("/")
    if prefix:
        check_key(prefix)
    return "s3", f"{parts.netloc}/{prefix}".rstrip("/")


def _is_key(key: str) -> bool:
    return 0 < len(key) <= _MAX_KEY and all(_SEGMENT.fullmatch(s) for s in key.split("/"))


def check_key(key: str) -> str:
    """``key`` if it is a relative path of plain names (letters, digits, ``.``, ``_``, ``-``; each starting
    with a letter or digit), else ValueError (which does not repeat the key: it may come from a request)."""
    if not _is_key(key):
        raise ValueError(
            "an artifact key is a relative path of names made of letters, digits, '.', '_' and '-', each "
            "starting with a letter or digit"
        )
    return key


def _describe(exc: BaseException) -> str:
    """An error's kind for messages and logs: its type, errno name and S3 error code; never its text, which
    can hold a server's words or a path."""
    text = type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        text += f" [{errno.errorcode[exc.errno]}]"
    response = getattr(exc.__cause__, "response", None) or getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return f"{text} ({code})" if isinstance(code, str) and code.isalnum() else text


def _check_digest(key: str, actual: str, expected: str | None) -> None:
    if expected is not None and actual != expected:
        raise ArtifactIntegrityError(
            f"artifact {key}: sha256 {actual[:12]}... does not match the recorded {expected[:12]}..."
        )


class _LocalBackend:
    """Files under a folder; a key is a path below it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def transient(self, exc: BaseException) -> bool:
        return False  # a full disk or a missing permission stays so

    def path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def put_new(self, key: str, source: bytes | Path) -> None:
        dest = self.path(key)
        atomic.make_dirs(dest.parent)
        with atomic.temp_file(dest.parent, dest.name) as tmp:
            if isinstance(source, bytes):
                tmp.write_bytes(source)
            else:
                shutil.copyfile(source, tmp)
            if not atomic.publish_new_file(tmp, dest):
                raise FileExistsError(errno.EEXIST, "exists")

    def open(self, key: str) -> BufferedIOBase:
        return self.path(key).open("rb")

    def is_file(self, key: str) -> bool:
        return self.path(key).is_file()

    def find(self, prefix: str) -> list[str]:
        keys = []
        for folder, dirs, files in os.walk(self.path(prefix) if prefix else self.root):
            dirs[:] = [d for d in dirs if _SEGMENT.fullmatch(d)]  # not into leftovers of interrupted writes
            parts = Path(folder).relative_to(self.root).parts
            keys += ["/".join((*parts, f)) for f in files]
        return keys

    def folders(self, prefix: str) -> list[str]:
        folder = self.path(prefix) if prefix else self.root
        if not folder.is_dir():
            return []
        return [p.name for p in folder.iterdir() if p.is_dir() and _SEGMENT.fullmatch(p.name)]

    def remove(self, prefix: str, keys: list[str]) -> None:
        folder = self.path(prefix)
        if folder.is_dir():  # renamed away first, so that it never shows half deleted
            atomic.remove_leftovers(folder.parent, f"{atomic.TMP_PREFIX}pruned-{folder.name}")
            atomic.remove_folder(folder)


class _S3Backend:
    """Objects under ``bucket/prefix`` through s3fs (its own retries off: the store's policy is the one)."""

    def __init__(self, root: str, endpoint_url: str, part_bytes: int) -> None:
        import s3fs  # only an s3:// store pays for importing botocore

        options: dict[str, Any] = {
            "skip_instance_cache": True,
            "use_listings_cache": False,  # another replica's writes must show at once
            "config_kwargs": {"retries": {"total_max_attempts": 1}, "connect_timeout": 10},
        }
        if endpoint_url:
            options["endpoint_url"] = endpoint_url  # else botocore reads AWS_ENDPOINT_URL(_S3), or uses AWS
        self.fs = s3fs.S3FileSystem(**options)
        self.fs.retries = 1  # attempts per call (a class attribute, not an option)
        self.root = root
        self.part_bytes = part_bytes
        self.conditional = True

    def transient(self, exc: BaseException) -> bool:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from s3fs.core import S3_RETRYABLE_ERRORS  # dropped connections, timeouts, short reads

        if isinstance(exc, FileExistsError | FileNotFoundError | PermissionError):
            return False
        if isinstance(exc, (TimeoutError, ConnectionError, BotoConnectionError, *S3_RETRYABLE_ERRORS)):
            return True
        return isinstance(exc, OSError) and exc.errno in (errno.EBUSY, errno.EREMOTEIO)  # 503, 409, 500

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put_new(self, key: str, source: bytes | Path) -> None:
        def send(**mode: str) -> None:  # one PUT, or a multipart upload completed as one
            if isinstance(source, bytes):
                self.fs.pipe_file(self.path(key), source, chunksize=self.part_bytes, **mode)
            else:
                self.fs.put_file(str(source), self.path(key), chunksize=self.part_bytes, **mode)

        if self.conditional:
            try:
                return send(mode="create")  # If-None-Match: *
            except OSError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
            self.conditional = False
            log.warning(
                "the S3 server does not support conditional writes (If-None-Match: *): create-only writes "
                "fall back to check-then-put, which two racing writers can both pass"
            )
        if self.is_file(key):
            raise FileExistsError(errno.EEXIST, "exists")
        send()

    def open(self, key: str) -> BufferedIOBase:
        stream: BufferedIOBase = self.fs.open(self.path(key), "rb")
        return stream

    def is_file(self, key: str) -> bool:
        try:
            return bool(self.fs.info(self.path(key))["type"] == "file")
        except FileNotFoundError:
            return False

    def find(self, prefix: str) -> list[str]:
        return [
            str(p)[len(self.root) + 1 :] for p in self.fs.find(self.path(prefix) if prefix else self.root)
        ]

    def folders(self, prefix: str) -> list[str]:
        try:
            entries = self.fs.ls(self.path(prefix) if prefix else self.root, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        return [str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"]

    def remove(self, prefix: str, keys: list[str]) -> None:
        if keys:
            self.fs.rm([self.path(k) for k in keys])
        # the parts of multipart uploads a killed writer never completed: invisible, but stored (and billed)
        bucket, _, key_prefix = self.path(prefix + "/").partition("/")
        uploads = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key_prefix)
        for upload in uploads.get("Uploads", []):
            self.fs.call_s3(
                "abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )


class ArtifactStore:
    """Create-only storage of immutable files under keys, in a local folder or an S3 bucket.

    Args:
        url: a folder, ``file:///absolute/path`` or ``s3://bucket/prefix`` (see :func:`parse_url`).
        endpoint_url: an S3-compatible server (MinIO, Ceph, moto) for ``s3://``; empty = botocore's choice
            (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, else AWS).
        retry: the retry policy of S3 calls (a local folder's errors are not retried).
        part_bytes: the part size of multipart uploads to S3 (5 MiB or more).

    Raises:
        ValueError: ``url`` is not a supported artifact URL.
    """

    def __init__(
        self, url: str, *, endpoint_url: str = "", retry: RetryPolicy | None = None, part_bytes: int = 0
    ) -> None:
        scheme, root = parse_url(url)
        self.retry = retry or RetryPolicy()
        self._backend: _LocalBackend | _S3Backend
        if scheme == "file":
            self._backend = _LocalBackend(Path(root))
            self.location = "the local artifact folder"  # no host path in a message (docs/reliability.md)
        else:
            self._backend = _S3Backend(root, endpoint_url, part_bytes or DEFAULT_PART_BYTES)
            self.location = f"s3://{root}"

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        """The store at ``settings.artifact_location`` (ARTIFACT_URL, else RESULTS_DIR/models)."""
        return cls(settings.artifact_location, endpoint_url=settings.artifact_endpoint_url)

    def put_new(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key``, which must not exist yet; returns its sha256.

        Raises:
            ArtifactExistsError: ``key`` exists (and is left unchanged).
            ArtifactStoreError: the store failed; nothing is visible under ``key``.
        """
        return self._create("put_new", check_key(key), sha256_bytes(data), data)

    def put_new_file(self, key: str, source: Path) -> str:
        """:meth:`put_new` of a local file, streamed (in parts on S3 above ``part_bytes``)."""
        return self._create("put_new_file", check_key(key), sha256_file(source), source)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under the folder ``prefix`` (an upload that was never published) and, on S3, its
        unfinished multipart uploads; returns how many objects were deleted. Raises ArtifactStoreError."""
        keys = self.list(check_key(prefix))
        self._run("delete_prefix", prefix, lambda: self._backend.remove(prefix, keys))
        log.info("artifact store: deleted %d object(s) under %s", len(keys), prefix)
        return len(keys)

    def get(self, key: str, *, sha256: str | None = None) -> bytes:
        """The bytes under ``key``, checked against ``sha256`` when given.

        Raises:
            ArtifactNotFoundError: nothing is stored under ``key``.
            ArtifactIntegrityError: the bytes do not match ``sha256``.
            ArtifactStoreError: the store failed.
        """

        def read() -> bytes:
            with self._backend.open(key) as fh:
                data = fh.read()
            _check_digest(key, sha256_bytes(data), sha256)
            return data

        return self._run("get", check_key(key), read, missing=True)

    def get_file(self, key: str, dest: Path, *, sha256: str | None = None) -> str:
        """Stream ``key`` into ``dest``, which is replaced (atomically) only by bytes matching ``sha256`` when
        given; returns their sha256. Raises as :meth:`get`."""

        def fetch() -> str:
            with atomic.atomic_path(dest) as tmp:
                with self._backend.open(key) as src, tmp.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                digest = sha256_file(tmp)
                _check_digest(key, digest, sha256)
            return digest

        return self._run("get_file", check_key(key), fetch, missing=True)

    def sha256(self, key: str) -> str:
        """The sha256 of the object under ``key``, read back from the store. Raises as :meth:`get`."""
        return self._run("sha256", check_key(key), lambda: self._digest(key), missing=True)

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key`` (a folder of keys is not one)."""
        return self._run("exists", check_key(key), lambda: self._backend.is_file(key))

    def folders(self, prefix: str = "") -> list[str]:
        """The names of the folders directly under ``prefix`` (the top level when empty), sorted: also those
        holding nothing but an interrupted write's leftovers, which :meth:`list` does not show."""
        found = self._run("folders", prefix and check_key(prefix), lambda: self._backend.folders(prefix))
        return sorted(name for name in found if _SEGMENT.fullmatch(name))

    def list(self, prefix: str = "") -> list[str]:
        """The keys under the folder ``prefix`` (all when empty), sorted; ``v1`` never matches ``v10``."""
        found = self._run("list", prefix and check_key(prefix), lambda: self._backend.find(prefix))
        under = f"{prefix}/" if prefix else ""
        return sorted(k for k in found if k.startswith(under) and _is_key(k))

    def url_of(self, key: str) -> str:
        """Where ``key`` is, for a person: its path in a local folder, or its ``s3://`` URL."""
        path = self._backend.path(check_key(key))
        return str(path) if isinstance(path, Path) else f"s3://{path}"

    def _digest(self, key: str) -> str:
        with self._backend.open(key) as fh:
            return sha256_stream(fh)

    def _create(self, op: str, key: str, digest: str, source: bytes | Path) -> str:
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            try:
                self._backend.put_new(key, source)
            except FileExistsError:
                if attempts > 1 and self._digest(key) == digest:
                    return  # an earlier attempt stored it; only its answer was lost
                raise

        self._run(op, key, attempt)
        log.debug("artifact store: %s %s (sha256 %s)", op, key, digest[:12])
        return digest

    def _run(self, op: str, key: str, fn: Callable[[], T], *, missing: bool = False) -> T:
        """``fn()`` under the retry policy; any failure becomes a typed error naming the operation and key."""
        step = f"{op} {key}".strip()
        retrier = Retrier(self.retry, transient=self._backend.transient, describe=_describe)
        try:
            return retrier.call(f"artifact store: {step}", fn)
        except ArtifactIntegrityError:
            raise
        except RetriesExhausted as exc:
            why = f"{_describe(exc.last)}, after {retrier.retries} retries"
            raise ArtifactStoreError(self._failed(step, why), step=step, retries=retrier.retries) from None
        except FileExistsError:
            message = f"{self.location}: {key} exists and was left unchanged (artifacts are written once)"
            raise ArtifactExistsError(message, step=step) from None
        except FileNotFoundError as exc:
            if missing:
                raise ArtifactNotFoundError(f"{self.location}: no artifact {key}", step=step) from None
            raise ArtifactStoreError(self._failed(step, _describe(exc)), step=step) from None
        except Exception as exc:
            raise ArtifactStoreError(self._failed(step, _describe(exc)), step=step) from None

    def _failed(self, step: str, why: str) -> str:
        return f"{self.location}: {step} failed: {why}"
