"""Step 1: fetch the CSV from an http(s) URL or a local path into DATA_DIR/raw/, content-addressed.

A download is bounded in size (MAX_DATA_BYTES), in time (DOWNLOAD_DEADLINE_SECONDS over every attempt,
redirect and retry) and in redirects (5). Redirects are followed here, hop by hop, so a source named by a
caller (see etl/source.py) is held to the policy on every hop, and the connection goes only to an address
that was checked, so DNS answering differently between check and connect changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import random
import re
import socket
import ssl
import tempfile
import time
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpcore
import httpx

from etl.errors import DataFormatError, DataSourceError, DataSourceNotAllowedError, EtlError
from etl.io import TMP_PREFIX, fsync_dir, prune_oldest
from etl.registry import Registry
from etl.settings import Settings
from etl.source import SourcePolicy, SourceURL, display_source, is_url, parse_source
from etl.validate import PreparedData, load_prepared

log = logging.getLogger(__name__)

__all__ = ["LoadResult", "check_override_source", "display_source", "is_url", "load_data", "source_policy"]

MAX_REDIRECTS = 5
_REDIRECT_STATUS = {301, 302, 303, 307, 308}
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_HINT = "the source (DATA_URL, or a data_url override) must be a reachable http(s) URL or a local CSV"
_RAW_NAME = re.compile(r"[0-9a-f]{64}\.csv")


@dataclass(frozen=True)
class LoadResult:
    """Where the raw CSV landed and what it was (``source`` as :func:`display_source` shows it)."""

    source: str
    path: Path
    sha256: str
    size_bytes: int
    duration_seconds: float

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def source_policy(settings: Settings, source: str) -> SourcePolicy | None:
    """The policy for ``source``: None for the configured DATA_URL (trusted), else the override rules.

    Allowed hosts are DATA_URL_ALLOWED_HOSTS, or when that is empty the host of DATA_URL (none when
    DATA_URL is a local file).
    """
    if source == settings.data_url:
        return None
    hosts = set(settings.data_url_allowed_hosts)
    if not hosts and is_url(settings.data_url):
        with contextlib.suppress(DataSourceNotAllowedError):  # a broken DATA_URL allows nothing
            default = parse_source(settings.data_url)
            hosts.add(default.host if isinstance(default, SourceURL) else "")
        hosts.discard("")
    return SourcePolicy(frozenset(hosts), settings.data_url_allow_private_networks, settings.data_dir)


def check_override_source(source: str, settings: Settings) -> None:
    """Refuse at once a caller-supplied source the download would refuse without touching the network.

    ``POST /train`` lets a caller name another data source; without these rules a token holder could make
    the service fetch internal URLs or read any file it can open.

    Raises:
        DataSourceNotAllowedError: malformed, another scheme, a host not allowed, a non-public IP literal,
            or a local path outside DATA_DIR.
    """
    policy = source_policy(settings, source)
    if policy is None:
        parse_source(source)
    else:
        policy.check(source)


# --- the network: checked addresses only, every socket operation bounded by the deadline -----------


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every read, write and TLS handshake ends by the download deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _timeout(self, timeout: float | None, error: type[Exception]) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise error("the download deadline passed")
        return remaining if timeout is None else min(timeout, remaining)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._timeout(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._timeout(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(
            ssl_context, server_hostname, self._timeout(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(stream, self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves the host itself, refuses it if any address breaks the policy, and connects to a checked
    address; then confirms the peer is that address. Without a policy (DATA_URL) it only adds the
    deadline."""

    def __init__(self, policy: SourcePolicy | None, deadline: float) -> None:
        self._inner = httpcore.SyncBackend()
        self._policy = policy
        self._deadline = deadline

    def _timeout(self, timeout: float | None) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise httpcore.ConnectTimeout("the download deadline passed")
        return remaining if timeout is None else min(timeout, remaining)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        policy = self._policy
        if policy is None:
            stream = self._inner.connect_tcp(
                host, port, self._timeout(timeout), local_address, socket_options
            )
            return _DeadlineStream(stream, self._deadline)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve the host: {exc}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
        for ip in addresses:
            policy.check_address(ip)  # any forbidden answer refuses the host: it may be a rebinding trick
        error: Exception = httpcore.ConnectError("the host resolved to no address")
        for ip in addresses:
            try:
                stream = self._inner.connect_tcp(
                    str(ip), port, self._timeout(timeout), local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            peer = stream.get_extra_info("server_addr")
            if not peer or ipaddress.ip_address(str(peer[0]).split("%")[0]) != ip:
                stream.close()
                raise DataSourceNotAllowedError("the data source connection reached an unexpected address")
            return _DeadlineStream(stream, self._deadline)
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("a data source is never a unix socket")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _client(policy: SourcePolicy | None, deadline: float, timeout: httpx.Timeout) -> httpx.Client:
    # No environment proxies: the connection must go to the address that was checked. httpx has no public
    # hook for a network backend, so its transport gets an httpcore pool built with ours.
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=_GuardedBackend(policy, deadline)
    )
    return httpx.Client(transport=transport, trust_env=False, follow_redirects=False, timeout=timeout)


class _HTTPStatus(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<"))


def _too_big(shown: str, max_bytes: int) -> DataFormatError:
    return DataFormatError(f"data source {shown} is larger than MAX_DATA_BYTES={max_bytes} bytes; {_HINT}")


def _past_deadline(shown: str, seconds: float, attempts: int) -> DataSourceError:
    return DataSourceError(
        f"data source {shown} did not finish downloading within DOWNLOAD_DEADLINE_SECONDS={seconds:g} s "
        f"({attempts} attempt(s)); {_HINT}"
    )


def _next_hop(url: SourceURL, location: str) -> SourceURL:
    """The redirect target, or DataSourceNotAllowedError (not retried) naming what is wrong, not the URL."""
    try:
        target = urljoin(url.url(), location)
    except ValueError:
        target = ""
    if not is_url(target):
        raise DataSourceNotAllowedError("the data source redirected to a URL that is not http(s)")
    try:
        hop = parse_source(target)
    except DataSourceNotAllowedError as exc:
        raise DataSourceNotAllowedError(
            "the data source redirected to an invalid URL: " + str(exc).removeprefix("data_url ")
        ) from None
    assert isinstance(hop, SourceURL)
    return hop


def _download(
    client: httpx.Client,
    url: SourceURL,
    tmp: Path,
    *,
    policy: SourcePolicy | None,
    max_bytes: int,
    deadline: float,
    shown: str,
    deadline_error: DataSourceError,
) -> None:
    for hop in range(MAX_REDIRECTS + 1):
        if policy is not None:
            policy.check_url(url, redirected=hop > 0)
        with client.stream("GET", url.request_url()) as resp:
            if resp.status_code in _REDIRECT_STATUS and "location" in resp.headers:
                url = _next_hop(url, resp.headers["location"])
                continue
            if resp.status_code >= 300:
                raise _HTTPStatus(resp.status_code)
            ctype = resp.headers.get("content-type", "").lower()
            if "text/html" in ctype:
                raise DataFormatError(f"data source {shown} returned an HTML page, not a CSV; {_HINT}")
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise _too_big(shown, max_bytes)
            size = 0
            with tmp.open("wb") as fh:
                for chunk in resp.iter_bytes():
                    if time.monotonic() > deadline:
                        raise deadline_error
                    size += len(chunk)
                    if size > max_bytes:
                        raise _too_big(shown, max_bytes)
                    fh.write(chunk)
            return
    raise DataFormatError(f"data source {shown} redirected more than {MAX_REDIRECTS} times; {_HINT}")


def _fetch_url(
    url: SourceURL,
    tmp: Path,
    *,
    policy: SourcePolicy | None,
    timeout: httpx.Timeout,
    retries: int,
    max_bytes: int,
    deadline_seconds: float,
    backoff_seconds: float,
) -> None:
    """Download with retries on transient failures only, all within ``deadline_seconds``."""
    shown = url.display()
    deadline = time.monotonic() + deadline_seconds
    attempt = 0
    with _client(policy, deadline, timeout) as client:
        while True:
            try:
                _download(
                    client,
                    url,
                    tmp,
                    policy=policy,
                    max_bytes=max_bytes,
                    deadline=deadline,
                    shown=shown,
                    deadline_error=_past_deadline(shown, deadline_seconds, attempt + 1),
                )
                return
            except _HTTPStatus as exc:
                if exc.status not in _TRANSIENT_STATUS or attempt >= retries:
                    raise DataSourceError(
                        f"data source {shown} answered HTTP {exc.status}; {_HINT}"
                    ) from None
                reason = f"HTTP {exc.status}"
            except (httpx.TransportError, httpx.StreamError) as exc:
                if time.monotonic() >= deadline:
                    raise _past_deadline(shown, deadline_seconds, attempt + 1) from None
                if attempt >= retries:
                    raise DataSourceError(
                        f"data source {shown} is unreachable after {attempt + 1} attempt(s) "
                        f"({type(exc).__name__}); {_HINT}"
                    ) from None
                reason = type(exc).__name__
            attempt += 1
            delay = backoff_seconds * 2 ** (attempt - 1) * (0.5 + random.random())
            if time.monotonic() + delay >= deadline:
                raise _past_deadline(shown, deadline_seconds, attempt)
            log.warning(
                "download of %s failed (%s); retry %d/%d in %.1fs", shown, reason, attempt, retries, delay
            )
            time.sleep(delay)


def load_data(
    source: str,
    raw_dir: Path,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
    retries: int = 3,
    max_bytes: int = 50 * 1024 * 1024,
    backoff_seconds: float = 0.5,
    deadline_seconds: float = 120.0,
    policy: SourcePolicy | None = None,
) -> LoadResult:
    """Fetch ``source`` into ``raw_dir/<sha256>.csv`` atomically.

    Args:
        source: an http(s) URL or a local file path.
        raw_dir: folder for raw downloads (created if missing).
        connect_timeout, read_timeout: seconds to connect, and between two reads.
        retries: extra attempts on transient errors (connection errors, timeouts, 408/425/429/5xx).
        max_bytes: size cap; a larger source is refused.
        backoff_seconds: base of the exponential backoff between attempts.
        deadline_seconds: total time for the download, every attempt, redirect and retry included.
        policy: the rules for a caller-named source (every redirect hop and connected address is checked);
            None for the configured DATA_URL.

    Returns:
        A LoadResult naming the stored file and its sha256.

    Raises:
        DataSourceNotAllowedError: a malformed source, or one the policy refuses (also on a redirect).
        DataSourceError: unreachable source, HTTP error, timeout, deadline passed, missing local file.
        DataFormatError: HTML instead of CSV, empty file, larger than ``max_bytes``, too many redirects.
    """
    started = time.monotonic()
    parsed = policy.check(source) if policy is not None else parse_source(source)
    shown = display_source(source)
    raw_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + "download.", dir=raw_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if isinstance(parsed, SourceURL):
            _fetch_url(
                parsed,
                tmp,
                policy=policy,
                timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
                retries=retries,
                max_bytes=max_bytes,
                deadline_seconds=deadline_seconds,
                backoff_seconds=backoff_seconds,
            )
        else:
            path = parsed.expanduser()
            if not path.is_file():
                raise DataSourceError(f"data source {shown} is not an existing file; {_HINT}")
            if path.stat().st_size > max_bytes:
                raise _too_big(shown, max_bytes)
            tmp.write_bytes(path.read_bytes())
        data = tmp.read_bytes()
        if not data.strip():
            raise DataFormatError(f"data source {shown} is empty; {_HINT}")
        if _looks_like_html(data[:512]):
            raise DataFormatError(f"data source {shown} returned an HTML page, not a CSV; {_HINT}")
        digest = hashlib.sha256(data).hexdigest()
        dest = raw_dir / f"{digest}.csv"
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)  # content-addressed: an identical concurrent download writes the same bytes
        fsync_dir(raw_dir)
    finally:
        tmp.unlink(missing_ok=True)
    result = LoadResult(shown, dest, digest, len(data), time.monotonic() - started)
    log.info(
        "loaded %s: %d bytes, sha256 %s, in %.2fs", shown, len(data), digest[:12], result.duration_seconds
    )
    return result


# --- after the download: validate, then discard it or prune older ones ------------------------------


def raw_files_in_use(registry: Registry) -> set[str]:
    """Names (``<sha256>.csv``) of the raw files that registered versions were trained on."""
    names = set()
    for version in registry.versions():
        sha = registry.read_meta(version).get("data_sha256")
        if isinstance(sha, str):
            names.add(f"{sha}.csv")
    return names


def prune_raw(raw_dir: Path, keep: int, in_use: set[str]) -> list[Path]:
    """Delete all but the ``keep`` newest downloads in ``raw_dir`` (0 keeps all); files in ``in_use`` stay."""
    if keep <= 0 or not raw_dir.is_dir():
        return []
    files = [p for p in raw_dir.iterdir() if _RAW_NAME.fullmatch(p.name) and p.is_file()]
    files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
    removed = prune_oldest(files, keep, protected={raw_dir / name for name in in_use})
    if removed:
        log.info("RAW_RETENTION=%d: removed %d older download(s) from %s", keep, len(removed), raw_dir)
    return removed


def prepare_loaded(
    loaded: LoadResult, registry: Registry, *, max_rows: int, raw_retention: int
) -> PreparedData:
    """Validate a download. An unusable one is deleted (unless a registered version was trained on it); a
    good one is kept, and downloads beyond the newest ``raw_retention`` are pruned.

    Raises:
        DataFormatError, DataValidationError: the file is not usable (the message never quotes it).
    """
    in_use = raw_files_in_use(registry)
    try:
        prepared = load_prepared(loaded.path, max_rows=max_rows)
    except EtlError:
        if loaded.path.name not in in_use:
            loaded.path.unlink(missing_ok=True)
            log.info("deleted the refused download %s", loaded.path.name)
        raise
    try:
        prune_raw(loaded.path.parent, raw_retention, in_use | {loaded.path.name})
    except OSError as exc:  # retention is housekeeping: it never fails a training
        log.warning("could not prune old downloads in %s: %s", loaded.path.parent, exc)
    return prepared
