"""Locust load test of the `ubm` ensemble over gRPC, through the SDK's `UbmClient`.

Each simulated user holds one `UbmClient` (one gRPC channel) and sends requests back to back:
every request carries ``--batch-size`` real Taobao sessions drawn at random from
``--records-file``. Every call is reported to Locust's statistics as request type ``grpc``, so
the web UI, headless mode, ``--csv`` and ``--html`` all see it.

``--host`` is the server's gRPC address, ``host:port`` (no scheme)::

    locust -f loadtest/locustfile.py --host 127.0.0.1:8001                       # web UI
    locust -f loadtest/locustfile.py --host 127.0.0.1:8001 --headless -u 4 -r 4 -t 30s
    locust -f loadtest/locustfile.py,loadtest/shape_spike.py --host 127.0.0.1:8001 --headless

When Locust quits, ``--max-fail-ratio`` and ``--max-p99-ms`` decide its exit status, so that a
load test can fail a pipeline (see `thresholds.py`). ``make loadtest`` and ``make capacity``
start their own tritonserver and run these for you.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc.experimental.gevent as grpc_gevent

# Importing locust monkey-patches the process for gevent, on which Locust runs its users.
from locust import User, constant, events, task
from locust import log as locust_log
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.exception import LocustError
from locust.runners import WorkerRunner

# tritonclient's gRPC client is grpcio, whose C core blocks every greenlet while one waits for
# an answer unless it is told to cooperate with gevent: after gevent's patching, before any
# gRPC channel exists, so at import time (as in Locust's own gRPC example).
grpc_gevent.init_gevent()

from defaults import DEFAULT_BATCH_SIZE, DEFAULT_RECORDS_FILE  # noqa: E402
from payloads import RecordPool, read_records, response_bytes  # noqa: E402
from thresholds import (  # noqa: E402
    DEFAULT_MAX_FAIL_RATIO,
    Thresholds,
    fail_ratio,
    positive_ms,
    verdict,
)

from ubm import UbmClient  # noqa: E402

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
def apply_thresholds(environment: Environment, **_kwargs: object) -> None:
    """Set Locust's exit code from ``--max-fail-ratio`` and ``--max-p99-ms`` (see thresholds.py).

    Skipped without a command line (Locust run from Python, as in `capacity.py`) and on a
    worker, whose master judges the totals.
    """
    options, runner = environment.parsed_options, environment.runner
    if options is None or runner is None or isinstance(runner, WorkerRunner):
        return
    total = runner.stats.total
    exit_code, reasons = verdict(
        Thresholds(options.max_fail_ratio, options.max_p99_ms),
        total.num_requests,
        total.num_failures,
        total.get_response_time_percentile(0.99) if total.num_requests else None,
        user_code_raised=bool(runner.exceptions) or locust_log.unhandled_greenlet_exception,
    )
    for reason in reasons:
        logging.error("load test failed: %s", reason)
    if exit_code is not None:
        environment.process_exit_code = exit_code


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

    wait_time = constant(0)
    batch_size = DEFAULT_BATCH_SIZE
    records_file = DEFAULT_RECORDS_FILE
    embedding = False
    request_timeout = DEFAULT_TIMEOUT_S

    def __init__(self, environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError("set the server's gRPC address with --host HOST:PORT")
        if "://" in self.host:
            raise LocustError(f"--host is a gRPC address HOST:PORT, not a URL: {self.host}")
        options = environment.parsed_options
        for name in ("batch_size", "records_file", "embedding", "request_timeout"):
            if options is not None and hasattr(options, name):
                setattr(self, name, getattr(options, name))
        self.pool = RecordPool(records_from(self.records_file), self.batch_size)
        self.request_name = f"score_batch[{self.batch_size}]"
        self.client: UbmClient | None = None

    def on_start(self) -> None:
        self.client = UbmClient(self.host, timeout_s=self.request_timeout)

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
        except Exception as e:  # every failure is a failed request in the statistics
            exception = e
        # The one call that makes a request show up in Locust's statistics and reports.
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=self.request_name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=response_bytes(scores),
            response=scores,
            context={"records": len(records)},
            exception=exception,
            start_time=start_time,
        )
