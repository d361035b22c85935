"""Command line: every pipeline step without the server.

python -m etl load | train | evaluate [VERSION] | promote VERSION | upload [VERSION]
python -m etl run [--serve-fallback] | models | rollback VERSION
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from etl.errors import EtlError
from etl.logger import setup_logging
from etl.pipeline import evaluate_version, train_version
from etl.registry import Registry
from etl.settings import Settings, settings_or_exit
from etl.upload_results import upload_to_storage

log = logging.getLogger("etl")


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def cmd_load(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    from etl.pipeline import load_with_settings
    from etl.validate import load_prepared

    loaded = load_with_settings(settings, args.data_url or settings.data_url)
    prepared = load_prepared(loaded.path)
    _print({**loaded.to_dict(), "rows": vars(prepared.counts), "classes": prepared.class_counts})
    return 0


def cmd_train(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    _print(train_version(settings, registry, args.data_url).to_dict())
    return 0


def cmd_evaluate(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    summary = evaluate_version(settings, registry, args.version, promote=not args.no_promote)
    _print(summary.to_dict())
    return 0 if summary.gate.passed else 3


def cmd_promote(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    previous = registry.promote(args.version)
    _print({"version": args.version, "previous_version": previous, "promoted": True})
    return 0


def cmd_upload(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    version = args.version or registry.require_served()
    _print(upload_to_storage(version, registry=registry, settings=settings).to_dict())
    return 0


def cmd_models(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    served = registry.served_version()
    rows = []
    for version in registry.versions():
        metrics = registry.read_metrics(version) or {}
        rows.append(
            {
                "version": version,
                "status": registry.status(version),
                "served": version == served,
                **{k: metrics.get(k) for k in ("accuracy", "precision", "recall", "f1", "roc_auc")},
            }
        )
    _print({"served_version": served, "models": rows})
    return 0


def cmd_run(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    """Train, evaluate (promote if the gate passes) and back up; with --serve-fallback a failure is not fatal
    when an earlier promoted model exists."""
    registry.recover()
    try:
        trained = train_version(settings, registry, args.data_url)
        evaluated = evaluate_version(settings, registry, trained.version, promote=True)
        if not evaluated.gate.passed:
            raise EtlError(
                f"version {trained.version} failed the quality gate: " + "; ".join(evaluated.gate.reasons)
            )
        uploaded = upload_to_storage(trained.version, registry=registry, settings=settings)
    except EtlError as exc:
        served = registry.served_version()
        if args.serve_fallback and served is not None:
            log.error("pipeline failed: %s", exc)
            log.warning("serving the earlier promoted version %s instead", served)
            return 0
        raise
    _print(
        {
            "version": trained.version,
            "rows": trained.rows,
            "metrics": {
                k: evaluated.metrics[k] for k in ("accuracy", "precision", "recall", "f1", "roc_auc")
            },
            "cv": trained.cv,
            "promoted": evaluated.promoted,
            "backup_dir": uploaded.backup_dir,
            "drive": uploaded.drive,
        }
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m etl", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("load", help="download and validate the data (no training)")
    p.add_argument("--data-url", help="override DATA_URL")
    p.set_defaults(fn=cmd_load)
    p = sub.add_parser("train", help="train and register a new version")
    p.add_argument("--data-url", help="override DATA_URL")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("evaluate", help="evaluate a version (default newest) and promote it if it passes")
    p.add_argument("version", nargs="?")
    p.add_argument("--no-promote", action="store_true", help="judge only, do not serve it")
    p.set_defaults(fn=cmd_evaluate)
    for name, help_text in (
        ("promote", "serve a version that passed the gate"),
        ("rollback", "serve an earlier version"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("version")
        p.set_defaults(fn=cmd_promote)
    p = sub.add_parser("upload", help="back up a version (default served) and upload it to Google Drive")
    p.add_argument("version", nargs="?")
    p.set_defaults(fn=cmd_upload)
    p = sub.add_parser("run", help="the whole pipeline: train, evaluate, promote, upload")
    p.add_argument("--data-url", help="override DATA_URL")
    p.add_argument(
        "--serve-fallback",
        action="store_true",
        help="on failure, exit 0 if an earlier promoted model exists (used by `make run`)",
    )
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("models", help="list versions with status and key metrics")
    p.set_defaults(fn=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_or_exit()
    except SystemExit as exc:  # a bad setting, already reported without its value
        return int(exc.code or 2)
    setup_logging(settings.log_level)
    registry = Registry(settings.results_dir)
    try:
        code: int = args.fn(settings, registry, args)
    except EtlError as exc:
        log.error("%s failed: %s", args.command, exc)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
