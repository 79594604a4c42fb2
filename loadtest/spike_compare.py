"""Bounded vs unbounded server queues under the spike shape, measured in one run.

Writes two model repositories from the same model and encoder variant: ``bounded`` with the
queue policy of ``--max-queue-size``/``--queue-timeout-ms`` (by default the shipped ones) and
``unbounded`` with no bound and the old 300 s timeout. Each round serves each from its own
tritonserver and runs the spike shape (`stages.SPIKE`, or ``--peak-users`` at its peak)
against it with Locust in this process, the variants taking turns (the second round in the
other order, and so on), so that a drift of the machine's speed favours neither.

Users send requests back to back with the SDK's retries off, so that every refusal counts; a
refused user pauses as the SDK's first retry would (see locustfile.py). Prints, per variant
over all rounds, p50/p99 of the accepted requests (exact, not Locust's rounded histogram), p99
during and after the spike, refused and failed requests; writes them, per stage and per round
too, to ``--out`` (results/spike.json).

    python loadtest/spike_compare.py                              # 2 rounds, 4 spikes of 60 s
    python loadtest/spike_compare.py --max-queue-size 8 --peak-users 64
    python loadtest/spike_compare.py --time-scale 0.1 --rounds 1  # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# Importing locust monkey-patches the process for gevent, on which Locust runs its users: first,
# before the SDK loads gRPC and ssl.
import locust  # noqa: F401  # isort: skip
import gevent
from defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MODEL_DIR,
    DEFAULT_ONNX_DIR,
    DEFAULT_RECORDS_FILE,
    DEFAULT_REPOSITORY,
    RESULTS_DIR,
    RUN_DIR,
)
from local_server import local_server
from spike_stats import Outcomes, SpikeRecorder, scaled_stages, summary
from stages import MAX_USERS, SPIKE, Stage

from ubm_build.bench import report

UNBOUNDED_QUEUE_TIMEOUT_MS = 300_000
"""The queue timeout before the bound: requests waited until the client gave up."""
DEFAULT_OUT = RESULTS_DIR / "spike.json"
SPIKE_STAGE = max(range(len(SPIKE)), key=lambda i: SPIKE[i].users)
"""Index of the stage at the spike's peak; the last stage shows the recovery."""


@dataclass(frozen=True)
class QueuePolicy:
    """One variant's queue bound (``repository.Tuning`` fields of the same names)."""

    max_queue_size: int
    """0: no bound."""
    queue_timeout_ms: int


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--onnx-dir", type=Path, default=DEFAULT_ONNX_DIR)
    parser.add_argument(
        "--encoder-variant",
        help="the encoder-<variant>.onnx to serve (default: --repository's, else the fastest"
        " that passed its checks)",
    )
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument(
        "--max-queue-size", type=int, help="of the bounded variant (default: the shipped one)"
    )
    parser.add_argument(
        "--queue-timeout-ms", type=int, help="of the bounded variant (default: the shipped one)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="spikes per variant")
    parser.add_argument(
        "--peak-users",
        type=int,
        default=SPIKE[SPIKE_STAGE].users,
        help=f"users at the spike's peak, at most {MAX_USERS} (default: %(default)s)",
    )
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="stretch (>1) or squeeze (<1) the stages"
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--records-file", type=Path, default=DEFAULT_RECORDS_FILE)
    parser.add_argument("--request-timeout", type=float, default=30.0, help="seconds")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR / "spike")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.rounds < 1 or not 1 <= args.peak_users <= MAX_USERS or args.time_scale <= 0:
        parser.error(f"--rounds >= 1, --peak-users 1 to {MAX_USERS}, --time-scale > 0")
    if min(args.max_queue_size or 0, args.queue_timeout_ms or 0) < 0:
        parser.error("--max-queue-size and --queue-timeout-ms are 0 or more")
    return args


def queue_policies(args: argparse.Namespace) -> dict[str, QueuePolicy]:
    """The two variants: ``bounded`` as the options say, ``unbounded`` as before the bound."""
    from ubm_build.serving.repository import Tuning  # loads torch: not for --help

    shipped = Tuning()
    size, timeout_ms = args.max_queue_size, args.queue_timeout_ms
    return {
        "bounded": QueuePolicy(
            shipped.max_queue_size if size is None else size,
            shipped.queue_timeout_ms if timeout_ms is None else timeout_ms,
        ),
        "unbounded": QueuePolicy(0, UNBOUNDED_QUEUE_TIMEOUT_MS),
    }


def write_repositories(args: argparse.Namespace, policies: dict[str, QueuePolicy]) -> dict:
    """One repository per policy under ``--run-dir``, all from the same model and encoder."""
    from ubm_build import export
    from ubm_build.bench.served import variant_repository
    from ubm_build.serving.repository import Tuning, served_variant

    variant = (
        args.encoder_variant
        or served_variant(args.repository, args.onnx_dir)
        or export.fastest_passing(export.read_reports(args.onnx_dir)).variant
    )
    args.encoder_variant = variant
    return {
        name: variant_repository(
            args.run_dir / "repositories" / name,
            args.model_dir,
            args.onnx_dir,
            variant,
            replace(Tuning(), **asdict(policy)),
        )
        for name, policy in policies.items()
    }


def run_spike(
    url: str, stages: list[Stage], args: argparse.Namespace
) -> tuple[list[Outcomes], float]:
    """One spike against `url` with Locust in this process: each stage's outcomes, and the CPU
    time Locust's process used, in % of one core (near 100, Locust is the limit and its
    latencies include waiting for its own event loop)."""
    import locustfile
    from locust.env import Environment

    user_class = type(
        "SpikeUser",
        (locustfile.UbmUser,),
        {
            "batch_size": args.batch_size,
            "records_file": args.records_file,
            "request_timeout": args.request_timeout,
            "retry_deadline": 0.0,
        },
    )
    env = Environment(user_classes=[user_class], host=url)
    runner = env.create_local_runner()
    recorder = SpikeRecorder(len(stages))
    env.events.request.add_listener(recorder.on_request)
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        for index, stage in enumerate(stages):
            recorder.stage = index
            runner.start(stage.users, spawn_rate=stage.spawn_rate)
            gevent.sleep(stage.seconds)
    finally:
        recorder.stage = None
        runner.quit()
    cpu_percent = 100.0 * (time.process_time() - cpu_started) / (time.perf_counter() - started)
    return recorder.stages, round(cpu_percent, 1)


def variant_result(
    name: str,
    policy: QueuePolicy,
    stages: list[Stage],
    rounds: list[list[Outcomes]],
    locust_cpu_percent: list[float],
) -> dict:
    """A variant's figures over all rounds, per stage, and per round."""
    by_stage = [Outcomes.merged(outcomes) for outcomes in zip(*rounds, strict=True)]
    spike_s = sum(stage.seconds for stage in stages)
    return {
        "name": name,
        "queue": asdict(policy),
        "total": summary(Outcomes.merged(by_stage), spike_s * len(rounds)),
        "stages": [
            summary(outcomes, stage.seconds * len(rounds))
            for stage, outcomes in zip(stages, by_stage, strict=True)
        ],
        "rounds": [
            {**summary(Outcomes.merged(outcomes), spike_s), "locust_cpu_percent": cpu}
            for outcomes, cpu in zip(rounds, locust_cpu_percent, strict=True)
        ],
    }


def refused_cell(figures: dict) -> str:
    """E.g. ``196 (180 queue full, 16 queue timeout)``."""
    reasons = ", ".join(f"{n} {reason}" for reason, n in figures["refused_by_reason"].items())
    return f"{figures['refused']} ({reasons})" if reasons else str(figures["refused"])


def print_table(result: dict) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    log(
        f"\n{result['rounds']} round(s) of {len(result['stages'])} stages"
        f" (users {[stage['users'] for stage in result['stages']]}), batch"
        f" {result['batch_size']}, {result['cores']} cores, encoder {result['encoder_variant']}"
    )
    header = ("variant", "queue", "accepted/s", "p50 ms", "p99 ms", "spike p99", "after p99")
    rows = [(*header, "refused", "failures")]
    for variant in result["variants"]:
        total, stages = variant["total"], variant["stages"]
        queue = variant["queue"]
        rows.append(
            (
                variant["name"],
                f"{queue['max_queue_size'] or 'none'} / {queue['queue_timeout_ms']} ms",
                f"{total['accepted_per_s']:.1f}",
                ms(total["accepted_p50_ms"]),
                ms(total["accepted_p99_ms"]),
                ms(stages[SPIKE_STAGE]["accepted_p99_ms"]),
                ms(stages[-1]["accepted_p99_ms"]),
                refused_cell(total),
                str(total["failures"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) + 2)]
    for name, *cells in rows:
        aligned = [cell.rjust(width) for cell, width in zip(cells, widths[1:], strict=True)]
        log("  ".join([name.ljust(widths[0]), *aligned]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    policies = queue_policies(args)
    stages = scaled_stages(SPIKE, args.time_scale, args.peak_users)
    repositories = write_repositories(args, policies)
    measured: dict[str, list[list[Outcomes]]] = {name: [] for name in policies}
    locust_cpu: dict[str, list[float]] = {name: [] for name in policies}
    names = list(policies)
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            with local_server(repositories[name], args.run_dir / "server" / name, log) as url:
                outcomes, cpu_percent = run_spike(url, stages, args)
            measured[name].append(outcomes)
            locust_cpu[name].append(cpu_percent)
            figures = summary(Outcomes.merged(outcomes), sum(s.seconds for s in stages))
            log(f"round {round_ + 1} {name}: {json.dumps(figures)}, Locust CPU {cpu_percent}%")
    result = {
        "created": report.created(),
        "cores": report.usable_cores(),
        "batch_size": args.batch_size,
        "records_file": str(args.records_file),
        "encoder_variant": args.encoder_variant,
        "rounds": args.rounds,
        "stages": [asdict(stage) for stage in stages],
        "retries": "off: every refusal counts; a refused user pauses up to the SDK's first backoff",
        "variants": [
            variant_result(name, policy, stages, measured[name], locust_cpu[name])
            for name, policy in policies.items()
        ],
    }
    print_table(result)
    log(f"wrote {report.write(result, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
