"""Command line: every pipeline step without the server.

python -m etl load | train [--force] | evaluate [VERSION] | promote VERSION | upload [VERSION]
python -m etl run [--serve-fallback] | models | rollback VERSION
python -m etl reference show | set PATH | reset
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
from etl.pipeline import evaluate_version, open_registry, train_version
from etl.registry import Registry
from etl.settings import Settings, settings_or_exit
from etl.upload_results import upload_to_storage

log = logging.getLogger("etl")


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def cmd_load(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    from etl.load import prepare_loaded
    from etl.pipeline import load_with_settings

    loaded = load_with_settings(settings, args.data_url or settings.data_url)
    prepared = prepare_loaded(
        loaded, registry, max_rows=settings.max_data_rows, raw_retention=settings.raw_retention
    )
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


def cmd_reference(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    from etl.reference import load_reference, reference_from_file, write_reference

    if args.action == "set":
        if not args.path:
            raise EtlError("reference set needs the path of a CSV with the dataset's columns")
        reference = reference_from_file(settings.results_dir, Path(args.path))
    elif args.action == "reset":
        from etl.reference import seed_frame
        from etl.settings import BUNDLED_DATA_PATH
        from etl.validate import load_prepared

        clean = load_prepared(BUNDLED_DATA_PATH).frame
        reference = write_reference(
            settings.results_dir, seed_frame(clean), f"seeded from the bundled {BUNDLED_DATA_PATH.name}"
        )
    else:
        loaded = load_reference(settings.results_dir)
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


def cmd_gate_study(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    from etl.gate_study import run_study

    sys.stdout.write(run_study(settings, seeds=args.seeds, sequences=args.sequences, jobs=args.jobs))
    return 0


def cmd_run(settings: Settings, registry: Registry, args: argparse.Namespace) -> int:
    """Train, evaluate (promote if the gate passes) and back up; with --serve-fallback a failure is not fatal
    when an earlier promoted model exists."""
    registry.recover()
    try:
        trained = train_version(settings, registry, args.data_url)
        status = registry.status(trained.version)
        if trained.unchanged and status != "trained":
            log.info(
                "data unchanged since version %s (%s): nothing to evaluate or upload", trained.version, status
            )
            _print({"version": trained.version, "unchanged": True, "status": status})
            return 0
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
            "unchanged": trained.unchanged,
            "nested": {k: v["mean"] for k, v in trained.nested["metrics"].items()},
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
    p = sub.add_parser("reference", help="show, replace or reset the pinned reference set")
    p.add_argument("action", choices=("show", "set", "reset"))
    p.add_argument("path", nargs="?", help="CSV with the dataset's columns (for set)")
    p.set_defaults(fn=cmd_reference)
    p = sub.add_parser("gate-study", help="measure the quality gate's error rates (a study, minutes)")
    p.add_argument("--seeds", type=int, default=50, help="retrains per scenario (default 50)")
    p.add_argument("--sequences", type=int, default=2000, help="simulated sequences of 20 retrains")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: all CPUs)")
    p.set_defaults(fn=cmd_gate_study)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_or_exit()
    except SystemExit as exc:  # a bad setting, already reported without its value
        return int(exc.code or 2)
    setup_logging(settings.log_level)
    try:
        registry = open_registry(settings)
        code: int = args.fn(settings, registry, args)
    except EtlError as exc:
        log.error("%s failed: %s", args.command, exc)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
