"""Step 1: fetch the CSV from an http(s) URL or a local path into DATA_DIR/raw/, content-addressed."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from etl.errors import DataFormatError, DataSourceError, DataSourceNotAllowedError
from etl.io import TMP_PREFIX, fsync_dir

log = logging.getLogger(__name__)

_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_HINT = "the source (DATA_URL, or a data_url override) must be a reachable http(s) URL or a local CSV"


@dataclass(frozen=True)
class LoadResult:
    """Where the raw CSV landed and what it was."""

    source: str
    path: Path
    sha256: str
    size_bytes: int
    duration_seconds: float

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def check_override_source(source: str, *, default_source: str, data_dir: Path) -> None:
    """Refuse a caller-supplied local path outside DATA_DIR (an http(s) URL or the configured source is fine).

    ``POST /train`` lets a caller name another data source; without this a token holder could make the
    service read any file it can open and echo parts of it back in validation errors.

    Raises:
        DataSourceNotAllowedError: a local path that is neither DATA_URL nor inside DATA_DIR.
    """
    if is_url(source) or source == default_source:
        return
    root = data_dir.resolve()
    path = Path(source).expanduser().resolve()
    if path != root and root not in path.parents:
        raise DataSourceNotAllowedError(
            f"data_url {source!r} is a local path outside DATA_DIR ({root}); give an http(s) URL, or put the "
            "file under DATA_DIR"
        )


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<"))


def _too_big(source: str, max_bytes: int) -> DataFormatError:
    return DataFormatError(f"data source {source} is larger than MAX_DATA_BYTES={max_bytes} bytes; {_HINT}")


def _download(source: str, tmp: Path, *, timeout: httpx.Timeout, max_bytes: int) -> None:
    with httpx.stream("GET", source, timeout=timeout, follow_redirects=True) as resp:
        if resp.status_code >= 400:
            raise httpx.HTTPStatusError(f"HTTP {resp.status_code}", request=resp.request, response=resp)
        ctype = resp.headers.get("content-type", "").lower()
        if "text/html" in ctype:
            raise DataFormatError(f"data source {source} returned an HTML page, not a CSV; {_HINT}")
        declared = resp.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise _too_big(source, max_bytes)
        size = 0
        with tmp.open("wb") as fh:
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_big(source, max_bytes)
                fh.write(chunk)


def load_data(
    source: str,
    raw_dir: Path,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
    retries: int = 3,
    max_bytes: int = 50 * 1024 * 1024,
    backoff_seconds: float = 0.5,
) -> LoadResult:
    """Fetch ``source`` into ``raw_dir/<sha256>.csv`` atomically.

    Args:
        source: an http(s) URL or a local file path.
        raw_dir: folder for raw downloads (created if missing).
        connect_timeout, read_timeout: httpx timeouts in seconds.
        retries: extra attempts on transient errors (connection errors, timeouts, 408/429/5xx).
        max_bytes: size cap; a larger source is refused.
        backoff_seconds: base of the exponential backoff between attempts.

    Returns:
        A LoadResult naming the stored file and its sha256.

    Raises:
        DataSourceError: unreachable source, HTTP error, timeout, missing local file.
        DataFormatError: HTML instead of CSV, empty file, or larger than ``max_bytes``.
    """
    started = time.monotonic()
    raw_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + "download.", dir=raw_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if is_url(source):
            timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
            attempt = 0
            while True:
                try:
                    _download(source, tmp, timeout=timeout, max_bytes=max_bytes)
                    break
                except httpx.HTTPStatusError as exc:
                    status = exc.response.status_code
                    if status not in _TRANSIENT_STATUS or attempt >= retries:
                        raise DataSourceError(
                            f"data source {source} answered HTTP {status}; {_HINT}"
                        ) from None
                    reason = f"HTTP {status}"
                except (httpx.TransportError, httpx.StreamError) as exc:
                    if attempt >= retries:
                        raise DataSourceError(
                            f"data source {source} is unreachable after {attempt + 1} attempt(s) "
                            f"({type(exc).__name__}: {exc}); {_HINT}"
                        ) from None
                    reason = type(exc).__name__
                attempt += 1
                delay = backoff_seconds * 2 ** (attempt - 1) * (0.5 + random.random())
                log.warning(
                    "download of %s failed (%s); retry %d/%d in %.1fs",
                    source,
                    reason,
                    attempt,
                    retries,
                    delay,
                )
                time.sleep(delay)
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                raise DataSourceError(f"data source {source} is not an existing file; {_HINT}")
            if path.stat().st_size > max_bytes:
                raise _too_big(source, max_bytes)
            tmp.write_bytes(path.read_bytes())
        data = tmp.read_bytes()
        if not data.strip():
            raise DataFormatError(f"data source {source} is empty; {_HINT}")
        if _looks_like_html(data[:512]):
            raise DataFormatError(f"data source {source} returned an HTML page, not a CSV; {_HINT}")
        digest = hashlib.sha256(data).hexdigest()
        dest = raw_dir / f"{digest}.csv"
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)  # content-addressed: an identical concurrent download writes the same bytes
        fsync_dir(raw_dir)
    finally:
        tmp.unlink(missing_ok=True)
    result = LoadResult(source, dest, digest, len(data), time.monotonic() - started)
    log.info(
        "loaded %s: %d bytes, sha256 %s, in %.2fs", source, len(data), digest[:12], result.duration_seconds
    )
    return result
