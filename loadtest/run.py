"""`make loadtest`: a short headless Locust run against a tritonserver it starts and stops.

Writes Locust's CSV files (``ubm_stats.csv``, ``ubm_stats_history.csv``, ``ubm_failures.csv``,
``ubm_exceptions.csv``) and its HTML report (``report.html``) to ``--out``. Locust's exit status
is this script's: 1 when more requests failed than ``--max-fail-ratio`` allows (by default, any)
or the p99 latency passed ``--max-p99-ms`` (by default, no limit).

    python loadtest/run.py                         # 4 users, 30 s, 1 record per request
    python loadtest/run.py --max-p99-ms 250        # fail the run when p99 > 250 ms
    python loadtest/run.py --shape spike           # a shape from stages.py instead
    python loadtest/run.py --url 127.0.0.1:8001    # a server that is already running
    python loadtest/run.py -- --embedding          # anything after -- goes to locust
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_RECORDS_FILE,
    DEFAULT_REPOSITORY,
    RESULTS_DIR,
    ROOT,
    RUN_DIR,
)
from stages import SHAPES
from thresholds import DEFAULT_MAX_FAIL_RATIO, fail_ratio, positive_ms

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = RESULTS_DIR / "loadtest"
CSV_PREFIX = "ubm"
HTML_REPORT = "report.html"


def locust_command(args: argparse.Namespace, url: str) -> list[str]:
    """The headless ``locust`` command line that loads `url` as `args` ask."""
    locustfiles = [str(HERE / "locustfile.py")]
    if args.shape:
        locustfiles.append(str(HERE / f"shape_{args.shape}.py"))
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        ",".join(locustfiles),
        "--host",
        url,
        "--headless",
        "--only-summary",
        "--csv",
        str(args.out / CSV_PREFIX),
        "--csv-full-history",
        "--html",
        str(args.out / HTML_REPORT),
        "--batch-size",
        str(args.batch_size),
        "--records-file",
        str(args.records_file),
        "--max-fail-ratio",
        str(args.max_fail_ratio),
    ]
    if args.max_p99_ms is not None:
        command += ["--max-p99-ms", str(args.max_p99_ms)]
    if not args.shape:  # a shape sets users and time itself
        command += ["--users", str(args.users), "--spawn-rate", str(args.users)]
        command += ["--run-time", args.run_time]
    return command + args.locust_args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--url", help="load an already running server at HOST:PORT instead")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a load shape (default: none)")
    parser.add_argument("--users", type=int, default=4, help="users, without --shape")
    parser.add_argument("--run-time", default="30s", help="duration, without --shape")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--records-file", type=Path, default=DEFAULT_RECORDS_FILE)
    parser.add_argument(
        "--max-fail-ratio",
        type=fail_ratio,
        default=DEFAULT_MAX_FAIL_RATIO,
        help="exit 1 when a larger share of requests failed (0 to 1; default: %(default)s)",
    )
    parser.add_argument(
        "--max-p99-ms",
        type=positive_ms,
        help="exit 1 when the p99 latency over all requests is higher (default: no limit)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("locust_args", nargs="*", help="after --: passed to locust")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, url: str) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    command = locust_command(args, url)
    print("$", " ".join(command), flush=True)
    status = subprocess.run(command, cwd=ROOT, env=os.environ).returncode
    print(f"CSV: {args.out / CSV_PREFIX}_*.csv  HTML: {args.out / HTML_REPORT}", flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.url:
        return run(args, args.url)
    from local_server import local_server

    with local_server(args.repository, RUN_DIR / "loadtest") as url:
        return run(args, url)


if __name__ == "__main__":
    sys.exit(main())
