"""The HTTP download of a data source: checked addresses only, one deadline, redirects hop by hop, a size cap,
retries of transient failures (etl/retry.py).

A download is bounded in size (MAX_DATA_BYTES), in time (DOWNLOAD_DEADLINE_SECONDS over every attempt,
redirect and retry) and in redirects (5). Redirects are followed here, hop by hop, so a source named by a
caller (see etl/source.py) is held to the policy on every hop, and the connection goes only to an address
that was checked, so DNS answering differently between check and connect changes nothing.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
import typing
from pathlib import Path
from urllib.parse import urljoin

import httpcore
import httpx

from etl.errors import DataFormatError, DataSourceError, DataSourceNotAllowedError
from etl.retry import Retrier, RetriesExhausted, RetryPolicy
from etl.source import SourcePolicy, SourceURL, is_url, parse_source

MAX_REDIRECTS = 5
_REDIRECT_STATUS = {301, 302, 303, 307, 308}
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
HINT = "the source (DATA_URL, or a data_url override) must be a reachable http(s) URL or a local CSV"


def looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<"))


def too_big(shown: str, max_bytes: int) -> DataFormatError:
    return DataFormatError(f"data source {shown} is larger than MAX_DATA_BYTES={max_bytes} bytes; {HINT}")


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


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, _HTTPStatus):
        return exc.status in _TRANSIENT_STATUS
    return isinstance(exc, httpx.TransportError | httpx.StreamError)


def _describe(exc: BaseException) -> str:
    return f"HTTP {exc.status}" if isinstance(exc, _HTTPStatus) else type(exc).__name__


def _past_deadline(shown: str, seconds: float, attempts: int) -> DataSourceError:
    return DataSourceError(
        f"data source {shown} did not finish downloading within DOWNLOAD_DEADLINE_SECONDS={seconds:g} s "
        f"({attempts} attempt(s)); {HINT}"
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
                raise DataFormatError(f"data source {shown} returned an HTML page, not a CSV; {HINT}")
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise too_big(shown, max_bytes)
            size = 0
            with tmp.open("wb") as fh:
                for chunk in resp.iter_bytes():
                    if time.monotonic() > deadline:
                        raise deadline_error
                    size += len(chunk)
                    if size > max_bytes:
                        raise too_big(shown, max_bytes)
                    fh.write(chunk)
            return
    raise DataFormatError(f"data source {shown} redirected more than {MAX_REDIRECTS} times; {HINT}")


def fetch_url(
    url: SourceURL,
    tmp: Path,
    *,
    policy: SourcePolicy | None,
    timeout: httpx.Timeout,
    retry: RetryPolicy,
    max_bytes: int,
) -> None:
    """Download ``url`` into ``tmp``, retrying transient failures only, all within ``retry``'s deadline.

    Raises:
        DataSourceNotAllowedError: the policy refuses a hop or an address.
        DataSourceError: unreachable, an HTTP error, or the deadline passed.
        DataFormatError: HTML, larger than ``max_bytes``, too many redirects.
    """
    shown = url.display()
    retrier = Retrier(retry, transient=_transient, describe=_describe)
    attempts = 0

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        _download(
            client,
            url,
            tmp,
            policy=policy,
            max_bytes=max_bytes,
            deadline=retrier.deadline,
            shown=shown,
            deadline_error=_past_deadline(shown, retry.deadline_seconds, attempts),
        )

    with _client(policy, retrier.deadline, timeout) as client:
        try:
            retrier.call(f"download of {shown}", attempt)
        except _HTTPStatus as exc:  # not transient
            raise DataSourceError(f"data source {shown} answered HTTP {exc.status}; {HINT}") from None
        except RetriesExhausted as exc:
            last = exc.last
            timed_out = not isinstance(last, _HTTPStatus) and time.monotonic() >= retrier.deadline
            if exc.out_of_time or timed_out:
                raise _past_deadline(shown, retry.deadline_seconds, exc.attempts) from None
            if isinstance(last, _HTTPStatus):
                raise DataSourceError(f"data source {shown} answered HTTP {last.status}; {HINT}") from None
            raise DataSourceError(
                f"data source {shown} is unreachable after {exc.attempts} attempt(s) "
                f"({type(last).__name__}); {HINT}"
            ) from None
