"""`make capacity`: add users step by step until p99 latency exceeds the SLO or a request fails.

Runs Locust in this process (``locust.env.Environment`` and a local runner) with the
locustfile's `UbmUser`, against a tritonserver it starts on free ports and stops at the end
(or against ``--url``). Each step holds its user count for ``--warmup-seconds``, which are not
measured, then for ``--step-seconds``, whose every request latency is kept (not Locust's rounded
histogram). The capacity is the highest records/s among the steps whose p99 stayed within
``--slo-ms`` without a failed request.

Then, as a cross-check, NVIDIA's ``perf_analyzer`` (the C++ load generator of the
``tritonclient`` wheel) loads the same server with as many requests in flight as the capacity
step had users, the same batch size and the same records, and Locust measures that step once
more right after it, since a shared machine's speed drifts (skipped, with the reason, where
perf_analyzer cannot run; see ``make bench-cli``).

Writes ``capacity.json`` and ``capacity.png`` (throughput, p50 and p99 against users) to
``--out-dir``.

    python loadtest/capacity.py                       # SLO p99 <= 100 ms, 1 record per request
    python loadtest/capacity.py --slo-ms 250 --batch-size 8 --steps 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# Before gRPC loads: perf_analyzer starts with channels open (see ubm_build.perf_analyzer).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_STEPS = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)
DEFAULT_SLO_MS = 100.0
DEFAULT_STEP_S = 10.0
DEFAULT_WARMUP_S = 3.0
SPAWN_RATE = 50.0
"""Users started per second: a step's users all run well before its warm-up ends."""


@dataclass(frozen=True)
class Step:
    """One measured step: `users` users sending requests back to back."""

    users: int
    seconds: float
    requests: int
    failures: int
    records_per_s: float
    """Records in successful requests per second."""
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    """Latency percentiles of the successful requests; None when none succeeded."""
    within_slo: bool
    locust_cpu_percent: float
    """CPU time of the load generator's process over the step, in % of one core: near 100, it
    is the limit rather than the server."""


def measure(
    users: int,
    latencies_ms: Sequence[float],
    failures: int,
    seconds: float,
    batch_size: int,
    slo_ms: float,
    locust_cpu_percent: float = 0.0,
) -> Step:
    """A `Step` from the latencies of the step's successful requests and its failure count."""
    ok = np.asarray(latencies_ms, dtype=np.float64)
    p50 = float(np.percentile(ok, 50)) if ok.size else None
    p99 = float(np.percentile(ok, 99)) if ok.size else None
    return Step(
        users=users,
        seconds=round(seconds, 3),
        requests=int(ok.size) + failures,
        failures=failures,
        records_per_s=ok.size * batch_size / seconds,
        requests_per_s=(ok.size + failures) / seconds,
        p50_ms=p50,
        p99_ms=p99,
        within_slo=failures == 0 and p99 is not None and p99 <= slo_ms,
        locust_cpu_percent=locust_cpu_percent,
    )


def stop_reason(step: Step, slo_ms: float) -> str | None:
    """Why the ramp ends after `step`, or None to go on."""
    if step.failures:
        return f"{step.failures} of {step.requests} requests failed at {step.users} users"
    if step.p99_ms is None:
        return f"no request completed at {step.users} users"
    if step.p99_ms > slo_ms:
        return f"p99 {step.p99_ms:.1f} ms > SLO {slo_ms:g} ms at {step.users} users"
    return None


def best_step(steps: Sequence[Step]) -> Step | None:
    """The step with the highest records/s among those within the SLO."""
    passing = [step for step in steps if step.within_slo]
    return max(passing, key=lambda step: step.records_per_s) if passing else None


def plot(steps: Sequence[Step], slo_ms: float, best: Step | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [step.users for step in steps]
    nan = math.nan
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 6))
    top.plot(users, [step.records_per_s for step in steps], "o-", color="tab:blue")
    top.set_ylabel("records / s")
    top.set_ylim(0, 1.25 * max([step.records_per_s for step in steps], default=1.0) or 1.0)
    top.set_title("ubm ensemble: throughput and latency against concurrent users")
    bottom.plot(
        users, [s.p50_ms if s.p50_ms is not None else nan for s in steps], "o-", label="p50"
    )
    bottom.plot(
        users, [s.p99_ms if s.p99_ms is not None else nan for s in steps], "o-", label="p99"
    )
    bottom.axhline(slo_ms, color="tab:red", linestyle="--", label=f"SLO p99 {slo_ms:g} ms")
    bottom.set_ylim(bottom=0)
    if best is not None:
        top.plot([best.users], [best.records_per_s], "*", color="tab:green", markersize=14)
        top.annotate(
            f"capacity {best.records_per_s:.0f} records/s",
            (best.users, best.records_per_s),
            textcoords="offset points",
            xytext=(8, 8),
        )
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(users, [str(u) for u in users])
    bottom.minorticks_off()
    bottom.set_xlabel("concurrent users (requests in flight)")
    bottom.set_ylabel("latency per request, ms")
    bottom.legend()
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_steps(
    url: str,
    steps: Sequence[int],
    *,
    step_s: float,
    warmup_s: float,
    batch_size: int,
    records_file: Path,
    slo_ms: float,
    log: Callable[[str], None],
) -> tuple[list[Step], str]:
    """Ramp users through `steps` until one breaks the SLO; (measured steps, why it stopped)."""
    import gevent
    from locust.env import Environment

    sys.path.insert(0, str(HERE))
    import locustfile

    class CapacityUser(locustfile.UbmUser):
        pass

    CapacityUser.batch_size = batch_size
    CapacityUser.records_file = records_file

    env = Environment(user_classes=[CapacityUser], host=url)
    runner = env.create_local_runner()
    latencies: list[float] = []
    failures = 0
    recording = False

    def on_request(response_time, exception=None, **_) -> None:
        nonlocal failures
        if not recording:
            return
        if exception is None:
            latencies.append(response_time)
        else:
            failures += 1
            if failures == 1:
                log(f"  first failure at {runner.user_count} users: {exception!r}"[:300])

    env.events.request.add_listener(on_request)
    measured: list[Step] = []
    reason = f"reached the last step ({steps[-1]} users) within the SLO"
    try:
        for users in steps:
            runner.start(users, spawn_rate=SPAWN_RATE)
            gevent.sleep(warmup_s)
            latencies.clear()
            failures = 0
            recording, started, cpu = True, time.perf_counter(), time.process_time()
            gevent.sleep(step_s)
            recording, elapsed = False, time.perf_counter() - started
            cpu_percent = 100.0 * (time.process_time() - cpu) / elapsed
            step = measure(
                users,
                latencies,
                failures,
                elapsed,
                batch_size,
                slo_ms,
                locust_cpu_percent=round(cpu_percent, 1),
            )
            measured.append(step)
            log(describe(step))
            stopped = stop_reason(step, slo_ms)
            if stopped:
                reason = stopped
                break
    finally:
        runner.quit()
    return measured, reason


def perf_analyzer_check(
    url: str, step: Step, batch_size: int, records_file: Path, log: Callable[[str], None]
) -> dict:
    """perf_analyzer at `step`'s concurrency on the same server and records, beside Locust.

    Its measurement windows are half a step long; it stops when three agree within 10%. Where it
    cannot run or fails, the entry says why and the capacity result stands.
    """
    from ubm_build import perf_analyzer

    problem = perf_analyzer.problem()
    if problem:
        log(f"perf_analyzer cross-check skipped: {problem}")
        return {"skipped": problem}
    records = perf_analyzer.read_records(records_file, None)
    with tempfile.TemporaryDirectory(prefix="ubm_capacity_") as tmp:
        try:
            result = perf_analyzer.run(
                url,
                perf_analyzer.write_input_data(records, Path(tmp) / "input_data.json"),
                batch_size=batch_size,
                concurrency=step.users,
                measurement_interval_ms=max(500, round(step.seconds * 500)),
                max_trials=10,
                stability_percentage=10,
                workdir=Path(tmp),
            )
        except perf_analyzer.PerfAnalyzerError as e:
            log(f"perf_analyzer cross-check failed: {e.message}")
            return {"failed": e.message}
    ratio = result.records_per_s / step.records_per_s
    log(
        f"perf_analyzer, {step.users} requests in flight: {result.records_per_s:.1f} records/s,"
        f" p99 {result.p99_latency_ms or float('nan'):.1f} ms"
        f" ({ratio:.2f}x Locust's {step.records_per_s:.1f})"
    )
    return {**asdict(result), "concurrency": step.users, "over_locust": ratio}


def describe(step: Step) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    return (
        f"{step.users:>3} users: {step.records_per_s:8.1f} records/s, p50 {ms(step.p50_ms)} ms,"
        f" p99 {ms(step.p99_ms)} ms, {step.requests} requests, {step.failures} failed"
        f"{'' if step.within_slo else '  (over the SLO)'}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from payloads import DEFAULT_BATCH_SIZE, DEFAULT_RECORDS_FILE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slo-ms", type=float, default=DEFAULT_SLO_MS, help="p99 latency SLO")
    parser.add_argument(
        "--steps",
        default=",".join(map(str, DEFAULT_STEPS)),
        help="user counts to try, in order",
    )
    parser.add_argument("--step-seconds", type=float, default=DEFAULT_STEP_S)
    parser.add_argument("--warmup-seconds", type=float, default=DEFAULT_WARMUP_S)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--records-file", type=Path, default=DEFAULT_RECORDS_FILE)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument(
        "--onnx-dir",
        type=Path,
        default=ROOT / "artifacts" / "onnx",
        help="where `ubm-build export` wrote the encoder variants (to name the served one)",
    )
    parser.add_argument("--url", help="load an already running server at HOST:PORT instead")
    parser.add_argument(
        "--no-perf-analyzer",
        action="store_true",
        help="skip the perf_analyzer cross-check at the capacity step",
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    try:
        args.steps = [int(users) for users in args.steps.split(",")]
    except ValueError:
        parser.error(f"--steps takes comma-separated user counts, got {args.steps!r}")
    if not args.steps or min(args.steps) < 1:
        parser.error("--steps needs at least one user count, each 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    # Importing locust monkey-patches the process for gevent; it must come before the modules
    # that open sockets (the server helper's urllib, gRPC) are imported.
    import locust  # noqa: F401

    sys.path.insert(0, str(HERE))
    from local_server import RUN_DIR, local_server

    from ubm_build.repository import served_variant

    args = parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    def ramp(url: str) -> tuple[list[Step], str, dict | None]:
        log(
            f"ramping users {args.steps} against {url}: {args.batch_size} record(s) per request,"
            f" {args.warmup_seconds:g} s warm-up + {args.step_seconds:g} s measured per step,"
            f" SLO p99 <= {args.slo_ms:g} ms"
        )

        def ramp_through(steps: Sequence[int]) -> tuple[list[Step], str]:
            return run_steps(
                url,
                steps,
                step_s=args.step_seconds,
                warmup_s=args.warmup_seconds,
                batch_size=args.batch_size,
                records_file=args.records_file,
                slo_ms=args.slo_ms,
                log=log,
            )

        steps, reason = ramp_through(args.steps)
        best = best_step(steps)
        if best is None or args.no_perf_analyzer:
            return steps, reason, None
        check = perf_analyzer_check(url, best, args.batch_size, args.records_file, log)
        if "records_per_s" in check:
            # The machine's speed drifts: Locust again at the same load, right after.
            log("Locust again at the capacity step, for a side-by-side figure:")
            again = ramp_through([best.users])[0][0]
            check["locust_again"] = asdict(again)
            check["over_locust_again"] = check["records_per_s"] / again.records_per_s
        return steps, reason, check

    if args.url:
        steps, reason, cross_check = ramp(args.url)
    else:
        with local_server(args.repository, RUN_DIR / "capacity", log=log) as url:
            steps, reason, cross_check = ramp(url)

    best = best_step(steps)
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "slo": {"percentile": 99, "ms": args.slo_ms},
        "batch_size": args.batch_size,
        "records_file": str(args.records_file),
        "server": args.url or str(args.repository),
        "served_variant": None if args.url else served_variant(args.repository, args.onnx_dir),
        "step_seconds": args.step_seconds,
        "warmup_seconds": args.warmup_seconds,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_generator": "Locust in one process on the same machine as the server",
        },
        "stopped_because": reason,
        "capacity": None if best is None else asdict(best),
        "perf_analyzer": cross_check,
        "steps": [asdict(step) for step in steps],
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / "capacity.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    png_path = plot(steps, args.slo_ms, best, args.out_dir / "capacity.png")
    log(f"stopped: {reason}")
    if best is None:
        log(f"capacity: none, even {steps[0].users} user(s) missed the SLO")
    else:
        log(
            f"capacity: {best.records_per_s:.1f} records/s sustained under p99 <="
            f" {args.slo_ms:g} ms, at {best.users} users (p50 {best.p50_ms:.1f} ms,"
            f" p99 {best.p99_ms:.1f} ms, {args.batch_size} record(s) per request)"
        )
    log(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
