"""`make capacity`: add users step by step until p99 latency exceeds the SLO or a request fails.

Runs Locust in this process with the locustfile's `UbmUser` (`capacity_ramp.py`), against a
tritonserver it starts on free ports and stops at the end (or against ``--url``). Each step
holds its user count for ``--warmup-seconds``, which are not measured, then for
``--step-seconds``, whose every request latency is kept. The capacity is the highest records/s
among the steps whose p99 stayed within ``--slo-ms`` without a failed request
(`capacity_steps.py`).

Then, as a cross-check, NVIDIA's ``perf_analyzer`` loads the same server with as many requests in
flight as the capacity step had users (`capacity_cross_check.py`), and Locust measures that step
once more right after it, since a shared machine's speed drifts.

Writes ``capacity.json`` and ``capacity.png`` (`capacity_plot.py`) to ``--out-dir``.

    python loadtest/capacity.py                       # SLO p99 <= 100 ms, 1 record per request
    python loadtest/capacity.py --slo-ms 250 --batch-size 8 --steps 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from capacity_plot import plot
from capacity_settings import CapacitySettings
from capacity_steps import Step, best_step, describe_capacity
from defaults import RUN_DIR

# Before gRPC loads: perf_analyzer starts with channels open (see ubm_build.bench.perf_analyzer).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

JSON_NAME = "capacity.json"
PLOT_NAME = "capacity.png"


def log(message: str) -> None:
    print(message, flush=True)


def user_counts(text: str) -> tuple[int, ...]:
    """argparse type of ``--steps``: comma-separated user counts, each 1 or more."""
    try:
        counts = tuple(int(users) for users in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated user counts, got {text!r}") from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"user counts are 1 or more, got {text!r}")
    return counts


def parse_args(argv: list[str] | None) -> CapacitySettings:
    """The command line's `CapacitySettings`; its defaults are the dataclass's."""
    default = CapacitySettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slo-ms", type=float, default=default.slo_ms, help="p99 latency SLO")
    parser.add_argument(
        "--steps",
        dest="user_counts",
        metavar="N,N,...",
        type=user_counts,
        default=default.user_counts,
        help=f"user counts to try, in order (default: {','.join(map(str, default.user_counts))})",
    )
    parser.add_argument("--step-seconds", type=float, default=default.step_seconds)
    parser.add_argument("--warmup-seconds", type=float, default=default.warmup_seconds)
    parser.add_argument("--batch-size", type=int, default=default.batch_size)
    parser.add_argument("--records-file", type=Path, default=default.records_file)
    parser.add_argument("--repository", type=Path, default=default.repository)
    parser.add_argument(
        "--onnx-dir",
        type=Path,
        default=default.onnx_dir,
        help="where `ubm-build export` wrote the encoder variants (to name the served one)",
    )
    parser.add_argument("--url", help="load an already running server at HOST:PORT instead")
    parser.add_argument(
        "--no-perf-analyzer",
        dest="perf_analyzer",
        action="store_false",
        help="skip the perf_analyzer cross-check at the capacity step",
    )
    parser.add_argument("--out-dir", type=Path, default=default.out_dir)
    return CapacitySettings(**vars(parser.parse_args(argv)))


def measure_capacity(url: str, settings: CapacitySettings) -> tuple[list[Step], str, dict | None]:
    """The ramp against `url`: (its steps, why it stopped, the perf_analyzer cross-check)."""
    from capacity_cross_check import perf_analyzer_check
    from capacity_ramp import run_steps

    log(settings.describe(url))
    steps, reason = run_steps(url, settings.user_counts, settings, log)
    best = best_step(steps)
    if best is None or not settings.perf_analyzer:
        return steps, reason, None
    check = perf_analyzer_check(url, best, settings, log)
    if "records_per_s" in check:
        # The machine's speed drifts: Locust again at the same load, right after.
        log("Locust again at the capacity step, for a side-by-side figure:")
        again = run_steps(url, (best.users,), settings, log)[0][0]
        check["locust_again"] = asdict(again)
        check["over_locust_again"] = check["records_per_s"] / again.records_per_s
    return steps, reason, check


def capacity_result(
    settings: CapacitySettings,
    steps: list[Step],
    stopped_because: str,
    cross_check: dict | None,
    served_variant: str | None,
) -> dict:
    """The content of ``capacity.json``."""
    best = best_step(steps)
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "slo": {"percentile": 99, "ms": settings.slo_ms},
        "batch_size": settings.batch_size,
        "records_file": str(settings.records_file),
        "server": settings.url or str(settings.repository),
        "served_variant": served_variant,
        "step_seconds": settings.step_seconds,
        "warmup_seconds": settings.warmup_seconds,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_generator": "Locust in one process on the same machine as the server",
        },
        "stopped_because": stopped_because,
        "capacity": None if best is None else asdict(best),
        "perf_analyzer": cross_check,
        "steps": [asdict(step) for step in steps],
    }


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    # Importing locust monkey-patches the process for gevent; it must come before the modules
    # that open sockets (the server helper's urllib, gRPC) are imported.
    import locust  # noqa: F401
    from local_server import local_server

    from ubm_build.serving.repository import served_variant

    if settings.url:
        steps, reason, cross_check = measure_capacity(settings.url, settings)
        variant = None
    else:
        with local_server(settings.repository, RUN_DIR / "capacity", log=log) as url:
            steps, reason, cross_check = measure_capacity(url, settings)
        variant = served_variant(settings.repository, settings.onnx_dir)

    settings.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = settings.out_dir / JSON_NAME
    result = capacity_result(settings, steps, reason, cross_check, variant)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    best = best_step(steps)
    png_path = plot(steps, settings.slo_ms, best, settings.out_dir / PLOT_NAME)
    log(f"stopped: {reason}")
    log(describe_capacity(best, steps[0], settings.slo_ms, settings.batch_size))
    log(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
