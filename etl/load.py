"""Step 1: fetch the CSV from an http(s) URL (etl/fetch.py) or a local path into DATA_DIR/raw/,
content-addressed; which sources a caller may name; validating a download and pruning old ones.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from etl import atomic
from etl.errors import DataFormatError, DataSourceError, DataSourceNotAllowedError, EtlError
from etl.fetch import HINT, fetch_url, looks_like_html, too_big
from etl.hashing import sha256_bytes
from etl.registry import Registry
from etl.retry import RetryPolicy
from etl.settings import Settings
from etl.source import SourcePolicy, SourceURL, display_source, is_url, parse_source
from etl.validate import PreparedData, load_prepared

log = logging.getLogger(__name__)

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

    A caller of the train step may name another data source; without these rules anyone allowed to train
    could make the pipeline fetch internal URLs or read any file it can open.

    Raises:
        DataSourceNotAllowedError: malformed, another scheme, a host not allowed, a non-public IP literal,
            or a local path outside DATA_DIR.
    """
    policy = source_policy(settings, source)
    if policy is None:
        parse_source(source)
    else:
        policy.check(source)


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
    with atomic.temp_file(raw_dir, "download") as tmp:
        if isinstance(parsed, SourceURL):
            fetch_url(
                parsed,
                tmp,
                policy=policy,
                timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
                retry=RetryPolicy(
                    retries=retries, base_seconds=backoff_seconds, deadline_seconds=deadline_seconds
                ),
                max_bytes=max_bytes,
            )
        else:
            path = parsed.expanduser()
            if not path.is_file():
                raise DataSourceError(f"data source {shown} is not an existing file; {HINT}")
            if path.stat().st_size > max_bytes:
                raise too_big(shown, max_bytes)
            tmp.write_bytes(path.read_bytes())
        data = tmp.read_bytes()
        if not data.strip():
            raise DataFormatError(f"data source {shown} is empty; {HINT}")
        if looks_like_html(data[:512]):
            raise DataFormatError(f"data source {shown} returned an HTML page, not a CSV; {HINT}")
        digest = sha256_bytes(data)
        dest = raw_dir / f"{digest}.csv"
        atomic.publish_file(tmp, dest)  # content-addressed: an identical concurrent download writes the same
    result = LoadResult(shown, dest, digest, len(data), time.monotonic() - started)
    log.info(
        "loaded %s: %d bytes, sha256 %s, in %.2fs", shown, len(data), digest[:12], result.duration_seconds
    )
    return result


def load_with_settings(settings: Settings, source: str) -> LoadResult:
    """``load_data`` with the download limits and folders from ``settings``."""
    return load_data(
        source,
        settings.raw_dir,
        connect_timeout=settings.http_connect_timeout,
        read_timeout=settings.http_read_timeout,
        retries=settings.download_retries,
        max_bytes=settings.max_data_bytes,
        deadline_seconds=settings.download_deadline_seconds,
        policy=source_policy(settings, source),
    )


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
    removed = atomic.prune_oldest(files, keep, protected={raw_dir / name for name in in_use})
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


def load_and_prepare(
    settings: Settings, registry: Registry, source: str | None = None
) -> tuple[LoadResult, PreparedData]:
    """Load ``source`` (default DATA_URL) with the limits of ``settings`` and validate it
    (:func:`prepare_loaded`)."""
    loaded = load_with_settings(settings, source or settings.data_url)
    prepared = prepare_loaded(
        loaded, registry, max_rows=settings.max_data_rows, raw_retention=settings.raw_retention
    )
    return loaded, prepared
