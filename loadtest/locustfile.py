"""Locust load test of the `ubm` ensemble over gRPC, through the SDK's `UbmClient`.

Each simulated user holds one `UbmClient` (one gRPC channel) and sends requests back to back:
every request carries ``--batch-size`` real Taobao sessions drawn at random from
``--records-file``. Every call is reported to Locust's statistics as request type ``grpc``, so
the web UI, headless mode, ``--csv`` and ``--html`` all see it.

``--host`` is what the SDK's ``url`` takes: the server's gRPC address ``host:port`` (no
``http://``), several replicas' separated by commas (each user's client goes round robin over
them, skipping one that fails), or gRPC's ``dns:[//DNS_SERVER/]NAME:PORT``, whose channel spreads
the calls over every address of the name (a Kubernetes headless Service)::

    locust -f loadtest/locustfile.py --host 127.0.0.1:8001                       # web UI
    locust -f loadtest/locustfile.py --host 127.0.0.1:8001 --headless -u 4 -r 4 -t 30s
    locust -f loadtest/locustfile.py,loadtest/shape_spike.py --host 127.0.0.1:8001 --headless
    locust -f loadtest/locustfile.py --host 10.0.0.5:8001,10.0.0.6:8001 --headless
    locust -f loadtest/locustfile.py --host dns:///ubm-headless.ml.svc:8001 --headless

A request that the server's queue bound turned away (full queue, or too long a wait in it; see
`refusals.py`) is reported as request type ``refused``, named after its reason, and is no
failure. The SDK retries refusals with backoff, so they show only once its retries are used up:
``--retry-deadline 0`` turns retries off and shows each one.

When Locust quits, ``--max-fail-ratio`` and ``--max-p99-ms`` decide its exit status, so that a
load test can fail a pipeline (see `thresholds.py`); refused requests count in neither.
``make loadtest`` and ``make capacity`` start their own tritonserver and run these for you.
"""

from __future__ import annotations

import gc
import logging
import random
import time
from pathlib import Path

import grpc.experimental.gevent as grpc_gevent

# Importing locust monkey-patches the process for gevent, on which Locust runs its users.
from locust import User, events, task
from locust import log as locust_log
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.exception import LocustError
from locust.runners import WorkerRunner
from locust.stats import RequestStats, StatsEntry

# tritonclient's gRPC client is grpcio, whose C core blocks every greenlet while one waits for
# an answer unless it is told to cooperate with gevent: after gevent's patching, before any
# gRPC channel exists, so at import time (as in Locust's own gRPC example).
grpc_gevent.init_gevent()

from defaults import DEFAULT_BATCH_SIZE, DEFAULT_RECORDS_FILE  # noqa: E402
from payloads import RecordPool, read_records, response_bytes  # noqa: E402
from refusals import REFUSED_TYPE, refusal_reason  # noqa: E402
from thresholds import (  # noqa: E402
    DEFAULT_MAX_FAIL_RATIO,
    Thresholds,
    fail_ratio,
    positive_ms,
    verdict,
)

from ubm import UbmClient  # noqa: E402
from ubm._endpoints import parse_urls  # noqa: E402
from ubm.config import DEFAULT_BACKOFF_S, DEFAULT_RETRY_DEADLINE_S  # noqa: E402

REQUEST_TYPE = "grpc"
DEFAULT_TIMEOUT_S = 30.0

_records_cache: dict[Path, list] = {}


@events.init_command_line_parser.add_listener
def add_arguments(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("ubm", "Options of the ubm locustfile")
    group.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="records per request (1 to 256)",
    )
    group.add_argument(
        "--records-file",
        default=str(DEFAULT_RECORDS_FILE),
        help="JSONL file of records to draw payloads from",
    )
    group.add_argument(
        "--embedding",
        action="store_true",
        default=False,
        help="also request each user's embedding",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds each request may take",
    )
    group.add_argument(
        "--retry-deadline",
        type=float,
        default=DEFAULT_RETRY_DEADLINE_S,
        help="seconds the SDK retries a request while the server is unreachable or refuses it"
        " (0: no retries, so that every refusal is reported; default: %(default)s)",
    )
    group.add_argument(
        "--max-fail-ratio",
        type=fail_ratio,
        default=DEFAULT_MAX_FAIL_RATIO,
        help="exit 1 when a larger share of requests failed (0 to 1; default: %(default)s)",
    )
    group.add_argument(
        "--max-p99-ms",
        type=positive_ms,
        default=None,
        help="exit 1 when the p99 latency over all requests is higher (default: no limit)",
    )


@events.quitting.add_listener
def collect_garbage(**_kwargs: object) -> None:
    """Free what is left of the users' clients while gevent still runs.

    A tritonclient client closes its gRPC channel when it is freed. Freed by the collector while
    Python exits, after gevent's hub has stopped, that close waits forever on a lock of gRPC's
    (seen with clients a killed user left in a reference cycle). Collected here, it finishes.
    """
    gc.collect()


@events.quitting.add_listener
def apply_thresholds(environment: Environment, **_kwargs: object) -> None:
    """Set Locust's exit code from ``--max-fail-ratio`` and ``--max-p99-ms`` (see thresholds.py).

    Skipped without a command line (Locust run from Python, as in `capacity.py`) and on a
    worker, whose master judges the totals.
    """
    options, runner = environment.parsed_options, environment.runner
    if options is None or runner is None or isinstance(runner, WorkerRunner):
        return
    answered, refused = split_refused(runner.stats)
    if refused:
        logging.info("%d request(s) refused by the server's queue bound, not failures", refused)
    exit_code, reasons = verdict(
        Thresholds(options.max_fail_ratio, options.max_p99_ms),
        answered.num_requests,
        answered.num_failures,
        answered.get_response_time_percentile(0.99) if answered.num_requests else None,
        user_code_raised=bool(runner.exceptions) or locust_log.unhandled_greenlet_exception,
    )
    for reason in reasons:
        logging.error("load test failed: %s", reason)
    if exit_code is not None:
        environment.process_exit_code = exit_code


def split_refused(stats: RequestStats) -> tuple[StatsEntry, int]:
    """The requests other than refusals, as one entry (for the thresholds); the refusals' count."""
    answered = StatsEntry(stats, "answered", "")
    refused = 0
    for entry in stats.entries.values():
        if entry.method == REFUSED_TYPE:
            refused += entry.num_requests
        else:
            answered.extend(entry)
    return answered, refused


def records_from(path: Path) -> list:
    """The file's records, parsed once per process and shared by all users."""
    path = Path(path).resolve()
    if path not in _records_cache:
        _records_cache[path] = read_records(path)
    return _records_cache[path]


class UbmUser(User):
    """One client scoring batches of real sessions back to back, with no think time.

    Settings come from the command line (see `add_arguments`); when Locust runs without one
    (``locust.env.Environment`` in `capacity.py`), from the class attributes below.
    """

    batch_size = DEFAULT_BATCH_SIZE
    records_file = DEFAULT_RECORDS_FILE
    embedding = False
    request_timeout = DEFAULT_TIMEOUT_S
    retry_deadline = DEFAULT_RETRY_DEADLINE_S

    def __init__(self, environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError("set the server's gRPC address with --host HOST:PORT")
        try:
            parse_urls(self.host)
        except ValueError as e:
            raise LocustError(f"--host: {e}") from e
        options = environment.parsed_options
        settings = ("batch_size", "records_file", "embedding", "request_timeout", "retry_deadline")
        for name in settings:
            if options is not None and hasattr(options, name):
                setattr(self, name, getattr(options, name))
        self.pool = RecordPool(records_from(self.records_file), self.batch_size)
        self.request_name = f"score_batch[{self.batch_size}]"
        self.client: UbmClient | None = None
        self.pause_s = 0.0

    def wait_time(self) -> float:
        """No think time, but a refused user pauses as the SDK's first retry would, rather than
        spinning against a full queue (which only burns the CPU the server needs)."""
        return self.pause_s

    def on_start(self) -> None:
        self.client = UbmClient(
            self.host, timeout_s=self.request_timeout, retry_deadline_s=self.retry_deadline
        )

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    @task
    def score(self) -> None:
        records = self.pool.draw()
        start_time = time.time()
        started = time.perf_counter()
        scores, exception = (), None
        try:
            scores = self.client.score_batch(records, embedding=self.embedding)
        except Exception as e:  # a failed request, unless it is a refusal (below)
            exception = e
        response_time = (time.perf_counter() - started) * 1000.0
        refused = refusal_reason(exception)
        exception = without_frames(exception)
        self.pause_s = random.uniform(0.0, DEFAULT_BACKOFF_S) if refused else 0.0
        # The one call that makes a request show up in Locust's statistics and reports.
        self.environment.events.request.fire(
            request_type=REFUSED_TYPE if refused else REQUEST_TYPE,
            name=f"{self.request_name} ({refused})" if refused else self.request_name,
            response_time=response_time,
            response_length=response_bytes(scores),
            response=scores,
            context={"records": len(records), "refused": refused},
            exception=None if refused else exception,
            start_time=start_time,
        )


def without_frames(error: Exception | None) -> Exception | None:
    """``error`` stripped of its traceback and the errors it was raised from.

    Locust keeps the first exception of each kind of failure in its statistics until the
    process exits. Its traceback holds the frames of the call, and so the user's `UbmClient`:
    gRPC channels that Python then closes while it exits, which can hang under gevent (seen
    when a replica is killed under load, tests/integration/test_replicas.py). Locust reports
    only the error's repr, which this leaves as it is.
    """
    if error is not None:
        error.__traceback__ = error.__cause__ = error.__context__ = None
        error.__suppress_context__ = True
    return error
