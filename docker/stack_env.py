"""The secrets of the docker compose stack: generate them into .env, and check them before the stack starts.

    python3 docker/stack_env.py write [--force]   # `make secrets`: .env with every secret generated
    python3 docker/stack_env.py check             # the `preflight` service: refuse unusable secrets

Standard library only: it runs on the host before anything is installed, and in a bare python image.
Nothing here prints a secret's value; messages name the variable and the rule it breaks.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# values that are put inside a URL (the database passwords) or a JSON string (the API token): unreserved
# URL characters only, so that no quoting can go wrong
URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")
# anything else: no whitespace, quotes, backslash or "$" (docker compose would interpolate it)
PLAIN = re.compile(r"[^\s'\"\\$]+")
PLACEHOLDER_WORDS = ("change-me", "changeme", "change_me", "placeholder", "example", "your-", "xxxx")
MIN_LENGTH = 16
FOLDERS = ("data", "results", "upload")


def _token() -> str:
    return secrets.token_urlsafe(32)


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _check_secret(value: str, *, url_safe: bool) -> str | None:
    if any(word in value.lower() for word in PLACEHOLDER_WORDS):
        return "is a placeholder"
    if len(value) < MIN_LENGTH or len(set(value)) < 8:
        return f"is too short or too repetitive (at least {MIN_LENGTH} characters, 8 different)"
    if url_safe and not URL_SAFE.fullmatch(value):
        return "may only contain A-Z a-z 0-9 . _ ~ - (it is embedded in a URL or JSON)"
    if not PLAIN.fullmatch(value):
        return "must not contain whitespace, quotes, a backslash or $"
    return None


def _check_signing_key(value: str) -> str | None:
    problem = _check_secret(value, url_safe=False)
    if problem is None and len(value) < 32:
        return "is too short (at least 32 characters)"
    return problem


def _check_fernet(value: str) -> str | None:
    if any(word in value.lower() for word in PLACEHOLDER_WORDS):
        return "is a placeholder"
    if re.fullmatch(r"[A-Za-z0-9_-]{43}=", value):
        try:
            if len(base64.urlsafe_b64decode(value)) == 32:
                return None
        except (binascii.Error, ValueError):
            pass
    return "is not a Fernet key (32 random bytes, url-safe base64: 44 characters ending in =)"


# name -> (how to make one, what it must be)
SECRETS: dict[str, tuple[Callable[[], str], Callable[[str], str | None]]] = {
    "API_TOKEN": (_token, lambda v: _check_secret(v, url_safe=True)),
    "POSTGRES_PASSWORD": (_token, lambda v: _check_secret(v, url_safe=True)),
    # the prediction record's database user (docker/postgres/init-predictions-db.sh); in PREDICTION_DB_URL
    "PREDICTION_DB_PASSWORD": (_token, lambda v: _check_secret(v, url_safe=True)),
    "AIRFLOW_FERNET_KEY": (_fernet_key, _check_fernet),
    "AIRFLOW_JWT_SECRET": (_token, lambda v: _check_secret(v, url_safe=False)),
    "AIRFLOW_API_SECRET_KEY": (_token, lambda v: _check_secret(v, url_safe=False)),
    "AIRFLOW_ADMIN_PASSWORD": (_token, lambda v: _check_secret(v, url_safe=False)),
    "GRAFANA_ADMIN_PASSWORD": (_token, lambda v: _check_secret(v, url_safe=False)),
    "GRAFANA_SECRET_KEY": (_token, lambda v: _check_secret(v, url_safe=False)),
    # signs model.json (etl/signing.py): every api replica needs the same one, and at least 32 bytes
    "MODEL_SIGNING_KEY": (lambda: secrets.token_hex(32), _check_signing_key),
    # the api's registry database on postgres (docker/postgres/create_databases.sh), inside REGISTRY_URL
    "REGISTRY_DB_PASSWORD": (_token, lambda v: _check_secret(v, url_safe=True)),
}


def problems(values: Mapping[str, str]) -> dict[str, str]:
    """Every secret that is missing or unusable -> why (never its value)."""
    found = {}
    for name, (_, check) in SECRETS.items():
        value = values.get(name, "")
        problem = "is not set" if not value else check(value)
        if problem:
            found[name] = problem
    return found


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments and blank lines skipped, surrounding quotes removed)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return values


def _fill(lines: list[str], replace: set[str], extra: Mapping[str, str]) -> list[str]:
    """``lines`` with a generated value for each secret in ``replace`` and the ``extra`` values set; secrets
    that no line assigns are appended."""
    out, seen = [], set()
    for line in lines:
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else ""
        if key in replace:
            seen.add(key)
            line = f"{key}={SECRETS[key][0]()}"
        elif key in extra:
            line = f"{key}={extra[key]}"
        out.append(line)
    return out + [f"{key}={SECRETS[key][0]()}" for key in sorted(replace - seen)]


def write(env_path: Path, example: Path, *, force: bool) -> int:
    """Write ``env_path`` from ``example`` with every secret generated; an existing file is changed only with
    ``force`` (or a yes on a terminal), and then only its unusable secrets are replaced."""
    for folder in FOLDERS:  # made by us, owned by us: the container runs as our uid (APP_UID)
        (env_path.parent / folder).mkdir(exist_ok=True)
    if env_path.exists():
        bad = problems(read_env(env_path))
        if not bad:
            print(f"{env_path.name} exists and every secret in it is usable; nothing to do")
            return 0
        listing = ", ".join(f"{name} {why}" for name, why in bad.items())
        if not force and not _confirm(f"{env_path.name}: {listing}. Replace these with generated values?"):
            print(
                f"{env_path.name} left as it is: {listing}. Run `make secrets FORCE=1` to replace only those "
                f"(the old file is kept as {env_path.name}.bak)",
                file=sys.stderr,
            )
            return 1
        shutil.copy2(env_path, env_path.with_name(env_path.name + ".bak"))
        replaced = set(bad)
        lines = _fill(env_path.read_text().splitlines(), replaced, {})
    else:
        uid = {}
        if hasattr(os, "getuid") and os.getuid() != 0:  # root keeps the images' own non-root users
            uid = {"APP_UID": str(os.getuid()), "APP_GID": str(os.getgid()), "AIRFLOW_UID": str(os.getuid())}
        replaced = set(SECRETS)
        lines = _fill(example.read_text().splitlines(), replaced, uid)
    fd = os.open(env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(env_path, 0o600)
    names = ", ".join(sorted(replaced))
    print(
        f"wrote {env_path.name} (mode 600) with {len(replaced)} generated secret(s): {names}; "
        f"folders {', '.join(FOLDERS)} ready. Next: docker compose up -d --build"
    )
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in {"y", "yes"}


def check(values: Mapping[str, str]) -> int:
    """The stack's preflight: exit 1 naming every unusable secret."""
    bad = problems(values)
    if not bad:
        print(f"preflight: all {len(SECRETS)} secrets are set and usable")
        return 0
    print(
        f"preflight: refusing to start the stack, {len(bad)} secret(s) in .env are not usable:",
        file=sys.stderr,
    )
    for name, why in bad.items():
        print(f"  {name} {why}", file=sys.stderr)
    print(
        "Run `make secrets` (FORCE=1 to replace them in an existing .env); see docs/deployment.md",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stack_env.py", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write .env from .env.example with every secret generated")
    w.add_argument("--force", action="store_true", help="replace the unusable secrets of an existing .env")
    w.add_argument("--env", type=Path, default=ROOT / ".env", help=argparse.SUPPRESS)
    w.add_argument("--example", type=Path, default=ROOT / ".env.example", help=argparse.SUPPRESS)
    sub.add_parser("check", help="check the secrets in the environment (the preflight service)")
    args = parser.parse_args(argv)
    if args.command == "write":
        return write(args.env, args.example, force=args.force)
    return check(os.environ)


if __name__ == "__main__":
    sys.exit(main())
