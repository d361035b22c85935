"""What a data source may be: syntax of a URL or path, canonical hosts, the override policy, a safe display.

``DATA_URL`` is the operator's choice and is trusted with any host. A source named by a caller of the
train step instead (the service's train request, ``python -m etl train --data-url``) passes
:class:`SourcePolicy`: an http(s) URL on an allowed host that resolves to public addresses only, or a file
under DATA_DIR. The download (etl/fetch.py) applies the same policy to every redirect hop and to the
address it connects to.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from etl.errors import DataSourceNotAllowedError
from etl.settings import BUNDLED_DATA_PATH

MAX_SOURCE_LENGTH = 2048
MAX_HOST_LENGTH = 253
MAX_LABEL_LENGTH = 63
SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_LABEL_RE = re.compile(r"[a-z0-9_-]+")
_IPV4_PART_RE = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
# Unicode categories never allowed in a source: controls (NUL, CR, LF...), format characters (bidi
# overrides, zero-width), lone surrogates, line and paragraph separators
_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SourceURL:
    """An http(s) URL taken apart and canonicalised; the request goes to exactly this host and port."""

    scheme: str
    host: str  # lower-case A-labels without a trailing dot, dotted-quad IPv4, or compressed IPv6
    port: int
    target: str  # path and query as given ("/" when empty); the fragment is dropped
    userinfo: str = ""  # as given (percent-encoded); sent as basic auth, never displayed

    @property
    def ip(self) -> IPAddress | None:
        """The host as an address when it is an IP literal."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def url(self) -> str:
        """The canonical URL without user info (the base for resolving a redirect)."""
        return f"{self.scheme}://{self.authority}{self.target}"

    def display(self) -> str:
        """Scheme, host, port and path only: no user info, query or fragment."""
        return f"{self.scheme}://{self.authority}{self.target.partition('?')[0]}"

    def request_url(self) -> httpx.URL:
        url = httpx.URL(self.url())
        if self.userinfo:
            url = url.copy_with(userinfo=self.userinfo.encode("utf-8"))
        return url


def _refuse(problem: str) -> DataSourceNotAllowedError:
    return DataSourceNotAllowedError(f"data_url {problem}")


def _check_characters(source: str) -> None:
    for i, ch in enumerate(source, start=1):
        category = unicodedata.category(ch)
        if category == "Cs":
            raise _refuse(f"is not valid Unicode: an unpaired surrogate at position {i}")
        if category in _FORBIDDEN_CATEGORIES:
            raise _refuse(f"contains a control or format character (U+{ord(ch):04X}) at position {i}")


def has_scheme(source: str) -> bool:
    """True when ``source`` starts like ``<scheme>:`` (an URL of any scheme), False for a path."""
    return _SCHEME_RE.match(source) is not None


def is_url(source: str) -> bool:
    """True for an http(s) URL (any case), False for anything else (a local path, or an invalid source)."""
    match = _SCHEME_RE.match(source)
    return match is not None and match.group(1).lower() in SCHEMES


def parse_source(source: str) -> SourceURL | Path:
    """Check the syntax of a data source and take it apart.

    Args:
        source: an http(s) URL or a local path.

    Returns:
        A SourceURL for an http(s) URL, a Path otherwise.

    Raises:
        DataSourceNotAllowedError: empty or longer than 2048 characters, control characters or lone
            surrogates, a scheme other than http(s), or a URL that does not parse (no host, bad IPv6
            literal, bad port, a host label over 63 or a host over 253 characters...). The message names
            the problem and never repeats the value.
    """
    if not source.strip():
        raise _refuse("is empty")
    if len(source) > MAX_SOURCE_LENGTH:
        raise _refuse(f"is longer than {MAX_SOURCE_LENGTH} characters")
    _check_characters(source)
    match = _SCHEME_RE.match(source)
    if match is None:
        return Path(source)
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise _refuse("uses an unsupported scheme: give an http(s) URL or a local path")
    return _parse_url(source, scheme)


def _parse_url(source: str, scheme: str) -> SourceURL:
    if any(ch.isspace() for ch in source):
        raise _refuse("contains whitespace (percent-encode it as %20)")
    if "\\" in source:
        raise _refuse("contains a backslash")
    try:
        parts = urlsplit(source)
        port = parts.port
    except ValueError as exc:
        problem = "has an invalid port" if "port" in str(exc).lower() else "is not a valid URL"
        if "ipv6" in str(exc).lower():
            problem = "has an invalid IPv6 address (unbalanced brackets)"
        raise _refuse(problem) from None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if not parts.hostname:
        raise _refuse("has no host")
    if hostport.startswith("["):
        if ":" not in parts.hostname:
            raise _refuse("has an invalid IPv6 address in brackets")
    elif ":" in parts.hostname:
        raise _refuse("has an IPv6 address without brackets")
    try:
        host = canonical_host(parts.hostname)
    except ValueError as exc:
        raise _refuse(f"has an invalid host: {exc}") from None
    if port == 0:
        raise _refuse("has an invalid port")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    url = SourceURL(scheme, host, port or _DEFAULT_PORTS[scheme], target, userinfo)
    try:  # httpx must read the URL the way we do, or the check and the request would differ
        parsed = url.request_url()
    except (httpx.InvalidURL, ValueError):
        raise _refuse("is not a valid URL") from None
    if parsed.raw_host.decode("ascii").lower() != host or (parsed.port or _DEFAULT_PORTS[scheme]) != url.port:
        raise _refuse("is not a valid URL")
    return url


def canonical_host(host: str) -> str:
    """The one spelling of a host used for comparisons and requests.

    Lower case, no trailing dot, IDNA A-labels; IPv4 in any form browsers accept (``2130706433``,
    ``0x7f.1``, ``0177.0.0.1``) as a dotted quad; IPv6 compressed, without brackets.

    Raises:
        ValueError: not a valid host name or address (message without the value).
    """
    h = host.lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        if "%" in h:
            raise ValueError("an IPv6 zone index is not allowed")
        try:
            return str(ipaddress.IPv6Address(h))
        except ValueError:
            raise ValueError("not a valid IPv6 address") from None
    if h.endswith("."):
        h = h[:-1]
    if not h:
        raise ValueError("empty host name")
    if not h.isascii():
        try:
            h = h.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(
                f"not a valid internationalised host name (a label is empty or over {MAX_LABEL_LENGTH} "
                "characters, or a character is not allowed)"
            ) from None
    labels = h.split(".")
    ipv4 = _parse_ipv4(labels)
    if ipv4 is not None:
        return str(ipv4)
    for label in labels:
        if not label:
            raise ValueError("host name with an empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise ValueError(f"host name label longer than {MAX_LABEL_LENGTH} characters")
        if not _LABEL_RE.fullmatch(label):
            raise ValueError("host name with a character other than letters, digits, '-' and '_'")
    if len(h) > MAX_HOST_LENGTH:
        raise ValueError(f"host name longer than {MAX_HOST_LENGTH} characters")
    return h


def _parse_ipv4(labels: list[str]) -> ipaddress.IPv4Address | None:
    """An IPv4 address when the host ends in a number (the WHATWG URL rule), else None."""
    if not _IPV4_PART_RE.fullmatch(labels[-1]):
        return None
    if len(labels) > 4:
        raise ValueError("not a valid IPv4 address")
    numbers = []
    for part in labels:
        if not _IPV4_PART_RE.fullmatch(part):
            raise ValueError("not a valid IPv4 address")
        try:
            if part[:2].lower() == "0x":
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part[1:], 8))
            else:
                numbers.append(int(part))
        except ValueError:
            raise ValueError("not a valid IPv4 address") from None
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError("IPv4 address out of range")
    value = numbers[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(numbers[:-1]))
    return ipaddress.IPv4Address(value)


def address_problem(ip: IPAddress) -> str | None:
    """Why a data source must not be fetched from ``ip`` (loopback, private...), or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return address_problem(embedded) or ("a tunnelled" if ip.teredo or ip.sixtofour else None)
    for name, flag in (
        ("a loopback", ip.is_loopback),
        ("an unspecified", ip.is_unspecified),
        ("a link-local", ip.is_link_local),
        ("a multicast", ip.is_multicast),
        ("a private", ip.is_private),
        ("a reserved", ip.is_reserved),
    ):
        if flag:
            return name
    return None if ip.is_global else "a non-public"


@dataclass(frozen=True)
class SourcePolicy:
    """Where a caller-named data source may point (DATA_URL itself needs no policy: the operator set it).

    Attributes:
        allowed_hosts: canonical host names an http(s) source may name, on every redirect hop.
        allow_private_networks: allow loopback, private, link-local and other non-public addresses.
        data_dir: a local path must resolve inside this folder.
    """

    allowed_hosts: frozenset[str]
    allow_private_networks: bool
    data_dir: Path

    def check(self, source: str) -> SourceURL | Path:
        """The checks that need no network: syntax, host allowlist, IP literals, local paths.

        Raises:
            DataSourceNotAllowedError: the source may not be used; the message says why and what to set.
        """
        parsed = parse_source(source)
        if isinstance(parsed, Path):
            root = self.data_dir.resolve()
            try:
                path = parsed.expanduser().resolve()
            except (OSError, RuntimeError, ValueError):
                raise _refuse("is not a usable local path") from None
            if path != root and root not in path.parents:
                raise _refuse(
                    "is a local path outside DATA_DIR; give an http(s) URL, or put the file under DATA_DIR"
                )
            return parsed
        self.check_url(parsed, redirected=False)
        return parsed

    def check_url(self, url: SourceURL, *, redirected: bool) -> None:
        """Refuse a host that is not allowed, or an IP literal that is not public."""
        if url.host not in self.allowed_hosts:
            if redirected:
                raise DataSourceNotAllowedError(
                    "the data source redirected to a host that is not in DATA_URL_ALLOWED_HOSTS"
                )
            allowed = ", ".join(sorted(self.allowed_hosts)) or "none"
            raise _refuse(
                f"host {url.host} is not allowed (allowed: {allowed}); add it to DATA_URL_ALLOWED_HOSTS "
                "to train from it"
            )
        if url.ip is not None:
            self.check_address(url.ip)

    def check_address(self, ip: IPAddress) -> None:
        """Refuse a non-public address unless DATA_URL_ALLOW_PRIVATE_NETWORKS is set."""
        problem = None if self.allow_private_networks else address_problem(ip)
        if problem:
            raise DataSourceNotAllowedError(
                f"the data source's host is or resolves to {problem} address, which a data_url may not "
                "reach; set DATA_URL_ALLOW_PRIVATE_NETWORKS=true to allow internal data servers"
            )


def display_source(source: str) -> str:
    """How a data source is stored, logged and shown: never credentials, a query or a host path.

    A URL keeps its scheme, host, port and path (user info, query and fragment are dropped); a local file
    shows only its name, e.g. ``BreastCancer.csv (bundled)``; an invalid source a placeholder. The result
    holds no control characters, so it cannot forge a log line.
    """
    try:
        parsed = parse_source(source)
    except DataSourceNotAllowedError:
        return "(an invalid URL)" if has_scheme(source) else "(an invalid path)"
    if isinstance(parsed, SourceURL):
        return parsed.display()
    try:
        bundled = parsed.expanduser().resolve() == BUNDLED_DATA_PATH
    except (OSError, RuntimeError, ValueError):
        bundled = False
    return f"{parsed.name or '(no file name)'} ({'bundled' if bundled else 'local file'})"
