"""Benchmark what writing the evaluation report adds to the evaluate step; optionally take docs/report.png.

    python bench/report.py [--rounds 5] [--screenshot docs/report.png]

What it does:

1. in a temporary directory, with the real pipeline on the bundled ``etl/data/BreastCancer.csv``: trains a
   version and evaluates it (promoted), then trains a challenger (RANDOM_SEED 7), the case with the most to
   draw (the served model beside it: three confusion matrices, the paired comparison);
2. each round runs in a fresh Python process, as the service's first /evaluate after a start does (it pays
   matplotlib's import): one untimed evaluation of the challenger (warms pandas and scikit-learn), then timed
   ``evaluate_version``: without the report (``write_report`` replaced by a no-op), with it (the process's
   first report: import and draw), with it again (warm), without it again;
3. prints each round and the medians: the overhead is "with" minus the mean of the two "without";
4. ``--screenshot PATH``: the served version's report in Debian's headless Chromium (no network), its first
   2080 CSS pixels at 1200 wide (down to the ROC and PR curves), saved as a 256-colour PNG.

It is a benchmark, not a test: it exits 0 whatever the figures (non-zero only when it cannot run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")

CHILD = """
import json, sys, time
from pathlib import Path
import etl.judging
from etl.pipeline import evaluate_version, open_registry
from etl.settings import Settings

base, version = Path(sys.argv[1]), sys.argv[2]
settings = Settings(_env_file=None, data_dir=base / "data", results_dir=base / "results",
                    upload_dir=base / "upload", model_signing_key_file=base / "secrets" / "model_signing.key")
registry = open_registry(settings)
real = etl.judging.write_report

def timed(with_report):
    etl.judging.write_report = real if with_report else (lambda registry, version: None)
    started = time.perf_counter()
    evaluate_version(settings, registry, version, promote=False)
    return time.perf_counter() - started

timed(False)  # warm-up, untimed
figures = {"without": timed(False), "with_first": timed(True), "with_again": timed(True)}
figures["without_again"] = timed(False)
figures["matplotlib_loaded"] = "matplotlib" in sys.modules
print(json.dumps(figures))
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare(base: Path) -> tuple[str, str]:
    """Train and promote a version, then train a challenger; returns (served, challenger)."""
    sys.path.insert(0, str(ROOT))
    from etl.pipeline import evaluate_version, open_registry, train_version
    from etl.settings import Settings

    def settings(**overrides: Any) -> Settings:
        return Settings(
            _env_file=None,
            data_dir=base / "data",
            results_dir=base / "results",
            upload_dir=base / "upload",
            model_signing_key_file=base / "secrets" / "model_signing.key",
            **overrides,
        )

    registry = open_registry(settings())
    served = train_version(settings(), registry).version
    assert evaluate_version(settings(), registry, served).promoted
    challenger = train_version(settings(random_seed=7), registry).version
    return served, challenger


def measure(base: Path, version: str, rounds: int) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results = []
    for n in range(1, rounds + 1):
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(base), version],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"round {n} failed:\n{proc.stderr[-3000:]}")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        figures["overhead_first"] = (
            figures["with_first"] - (figures["without"] + figures["without_again"]) / 2
        )
        figures["overhead_again"] = (
            figures["with_again"] - (figures["without"] + figures["without_again"]) / 2
        )
        f = {k: f"{v:.2f}s" for k, v in figures.items() if isinstance(v, float)}
        log(
            f"round {n}: evaluate without report {f['without']} / {f['without_again']}, with report "
            f"{f['with_first']} (first in the process) / {f['with_again']}; overhead {f['overhead_first']} / "
            f"{f['overhead_again']}"
        )
        results.append(figures)
    return results


def screenshot(report: Path, out: Path) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 2080}, offline=True)
            page = context.new_page()
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            raw = page.screenshot()
        finally:
            browser.close()
    import io

    image = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=256, dither=Image.Dither.NONE)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    log(f"screenshot: {out} ({out.stat().st_size // 1024} KB, {image.width}x{image.height})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes, each timing four evaluations")
    parser.add_argument(
        "--screenshot", type=Path, help="save a screenshot of the served version's report here"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        base = Path(tmp)
        started = time.monotonic()
        served, challenger = prepare(base)
        log(f"trained {served} (served) and {challenger} in {time.monotonic() - started:.1f}s")
        rounds = measure(base, challenger, args.rounds)
        if args.screenshot:
            screenshot(base / "results" / "models" / served / "report.html", args.screenshot)
    keys = [key for key in rounds[0] if key != "matplotlib_loaded"]
    m = {key: f"{statistics.median(r[key] for r in rounds):.2f}s" for key in keys}
    worst = max(r["overhead_first"] for r in rounds)
    print(
        f"evaluate (a challenger beside the served model), {len(rounds)} rounds, {os.cpu_count()} CPUs; "
        "medians:\n"
        f"  without the report         {m['without']}\n"
        f"  with it, first in process  {m['with_first']}  overhead {m['overhead_first']}"
        f" (worst {worst:.2f}s)\n"
        f"  with it, again             {m['with_again']}  overhead {m['overhead_again']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
