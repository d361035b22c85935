"""Command line: every pipeline step without the server.

python -m etl load | train [--force] | evaluate [VERSION] | promote VERSION | upload [VERSION]
python -m etl run [--serve-fallback] | models | rollback VERSION | report [VERSION]
python -m etl reference show | set PATH | reset
python -m etl registry show | import [--from RESULTS_DIR]
python -m etl gate-study [--seeds N]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from etl.errors import EtlError
from etl.logger import setup_logging
from etl.pipeline import (
    evaluate_version,
    list_models,
    open_registry,
    run_all,
    train_version,
    upload_to_storage,
)
from etl.registry import Registry
from etl.settings import Settings, settings_or_exit

log = logging.getLogger("etl")


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def cmd_load(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    from etl.load import load_and_prepare

    loaded, prepared = load_and_prepare(settings, registry, args.data_url)
    _print({**loaded.to_dict(), "rows": vars(prepared.counts), "classes": prepared.class_counts})
    return 0


def cmd_train(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    _print(train_version(settings, registry, args.data_url, force=args.force).to_dict())
    return 0


def cmd_evaluate(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    summary = evaluate_version(settings, registry, args.version, promote=not args.no_promote)
    _print(summary.to_dict())
    return 0 if summary.gate.passed else 3


def cmd_promote(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    previous = registry.promote(args.version, expected_epoch=args.expected_epoch)
    pointer = registry.pointer()
    _print({"version": args.version, "previous_version": previous, "promoted": True, "epoch": pointer.epoch})
    return 0


def cmd_upload(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    version = args.version or registry.require_served()
    _print(upload_to_storage(version, registry=registry, settings=settings).to_dict())
    return 0


def cmd_report(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    from etl.report import write_report

    _print(write_report(registry, args.version or registry.latest_version()).to_dict())
    return 0


def cmd_models(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    _print(list_models(registry))
    return 0


def cmd_reference(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    from etl.reference import load_reference, reference_from_file, seed_reference

    if args.action == "set":
        reference = reference_from_file(registry, Path(args.path))
    elif args.action == "reset":
        reference = seed_reference(registry)
    else:
        loaded = load_reference(registry)
        if loaded is None:
            _print(
                {
                    "reference": None,
                    "note": "none pinned yet: the first training seeds it from the bundled data",
                }
            )
            return 0
        reference = loaded
    _print({"reference": reference.describe()})
    return 0


def cmd_registry(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    if args.action == "import":
        from etl.registry_import import import_registry

        registry.import_legacy = False  # this import is the one that reports what it did
        result = import_registry(registry, Path(args.source) if args.source else settings.results_dir)
        _print(result.to_dict())
        return 1 if result.refused else 0
    pointer = registry.pointer()
    lease = registry.db.lease("training")
    _print(
        {
            "registry": registry.db.shown,
            "artifacts": registry.store.location,
            "served_version": pointer.version,
            "epoch": pointer.epoch,
            "versions": len(registry.versions()),
            "training_lease": {
                "held": lease.token is not None,
                "generation": lease.generation,
                "holder": lease.holder,
                "expires_at": lease.expires_at,
            },
        }
    )
    return 0


def cmd_gate_study(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    from etl.gate_study import run_study

    sys.stdout.write(run_study(settings, seeds=args.seeds, sequences=args.sequences, jobs=args.jobs))
    return 0


def cmd_run(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    _print(run_all(settings, registry, args.data_url, serve_fallback=args.serve_fallback).to_dict())
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
    p.add_argument(
        "--force", action="store_true", help="train even if the data, settings and libraries are unchanged"
    )
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
        p.add_argument(
            "--expected-epoch",
            type=int,
            help="switch only if the served pointer is still at this epoch (from `models`)",
        )
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
    p = sub.add_parser(
        "report", help="write the evaluation report (report.html and figures) of a version (default newest)"
    )
    p.add_argument("version", nargs="?")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("models", help="list versions with status and key metrics")
    p.set_defaults(fn=cmd_models)
    p = sub.add_parser("reference", help="show, replace or reset the pinned reference set")
    p.add_argument("action", choices=("show", "set", "reset"))
    p.add_argument("path", nargs="?", help="CSV with the dataset's columns (for set)")
    p.set_defaults(fn=cmd_reference)
    p = sub.add_parser(
        "registry", help="show the registry's stores, pointer and lease, or import one on disk"
    )
    p.add_argument("action", choices=("show", "import"))
    p.add_argument(
        "--from",
        dest="source",
        help="import: the results folder of the on-disk registry (default RESULTS_DIR)",
    )
    p.set_defaults(fn=cmd_registry)
    p = sub.add_parser("gate-study", help="measure the quality gate's error rates (a study, minutes)")
    p.add_argument("--seeds", type=int, default=50, help="retrains per scenario (default 50)")
    p.add_argument("--sequences", type=int, default=2000, help="simulated sequences of 20 retrains")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: all CPUs)")
    p.set_defaults(fn=cmd_gate_study)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "reference" and args.action == "set" and not args.path:
        parser.error("reference set needs the path of a CSV with the dataset's columns")
    try:
        settings = settings_or_exit()
    except SystemExit as exc:  # a bad setting, already reported without its value
        return int(exc.code or 2)
    setup_logging(settings.log_level)
    registry = None
    try:
        registry = open_registry(settings)
        code: int = args.fn(settings, registry, args)
    except EtlError as exc:
        log.error("%s failed: %s", args.command, exc)
        return 1
    finally:
        if registry is not None:
            registry.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
