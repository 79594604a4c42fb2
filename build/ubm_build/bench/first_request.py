"""`python -m ubm_build.bench.first_request`: how long the first request after a server start
takes, with the encoder's and head's warm-up (`ubm_build.serving.warmup`) and without it.

The repository given is served as written; a copy of it with every ``model_warmup`` removed is
the comparison. In each of ``--rounds`` rounds both are served in turn (the order alternating
between rounds, so that a drift of the machine's speed favours neither), each by a tritonserver
of its own on free ports. Once the server is ready, one `ubm.UbmClient` connects (untimed) and
sends the first request, then ``--follow-ups`` more, one at a time; the server is then stopped.
Every request carries ``--batch-size`` of the example records, the first request the same ones
in every start. Reported are the medians over the rounds: the time until the server was ready
(model loading, warm-up included), the first request's latency, the median of the follow-ups,
and the time each model spent on the first request (from Triton's statistics), which shows
what is still cold.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from google.protobuf import text_format
from rich.console import Console
from tritonclient.grpc import InferenceServerClient, model_config_pb2
from tritonclient.utils import InferenceServerException

from ubm import UbmClient, UbmError
from ubm.records import Record, RecordError, parse_record_json
from ubm_build import options, paths
from ubm_build.bench import report
from ubm_build.bench.commands import batch_size_option, click_errors, count_option
from ubm_build.bench.errors import BenchError
from ubm_build.bench.report import Log
from ubm_build.bench.workload import read_lines
from ubm_build.serving import server, versions
from ubm_build.serving.warmup import WARMUP_DIR

WITH_WARMUP = "warmup"
WITHOUT_WARMUP = "no_warmup"
VARIANTS = (WITH_WARMUP, WITHOUT_WARMUP)
MODELS = versions.STEPS
REQUEST_TIMEOUT_S = 600.0
STATISTICS_WAIT_S = 2.0


@dataclass(frozen=True)
class FirstRequestSettings:
    """What `run` measures."""

    rounds: int = 3
    """Starts of each repository, the two taking turns."""
    follow_ups: int = 20
    """Requests after the first, whose median is the warm figure."""
    batch_size: int = 1
    """Records per request."""


DEFAULTS = FirstRequestSettings()


@dataclass(frozen=True)
class Start:
    """One server start, measured."""

    ready_s: float
    """From starting tritonserver until it reported the ensemble ready."""
    first_ms: float
    """The first request's latency."""
    follow_up_ms: float
    """The median latency of the requests after it."""
    first_model_ms: dict[str, float]
    """Each model's time on the first request, queue included (Triton's statistics)."""


def _configs(repository_dir: Path) -> list[Path]:
    return sorted(repository_dir.glob("*/config.pbtxt"))


def _read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def warmup_samples(repository_dir: Path) -> dict[str, int]:
    """The models of `repository_dir` that have ``model_warmup``, with their sample counts."""
    counts = {
        path.parent.name: len(_read_config(path).model_warmup) for path in _configs(repository_dir)
    }
    return {model: count for model, count in counts.items() if count}


def strip_warmup(repository_dir: Path, destination: Path) -> Path:
    """A copy of `repository_dir` at `destination` (replaced) without any model's warm-up."""
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(repository_dir, destination)
    for path in _configs(destination):
        config = _read_config(path)
        if config.model_warmup:
            config.ClearField("model_warmup")
            path.write_text(text_format.MessageToString(config))
        shutil.rmtree(path.parent / WARMUP_DIR, ignore_errors=True)
    return destination


def example_batches(records_path: Path, n: int, batch_size: int) -> list[list[Record]]:
    """`n` requests of `batch_size` records from `records_path`, repeating it if too short.

    Raises:
        BenchError: the file holds no records, or a record is invalid.
    """
    try:
        records = [parse_record_json(line) for line in read_lines(records_path)]
    except RecordError as e:
        raise BenchError(f"{records_path}: {e}") from e
    needed = n * batch_size
    cycled = [records[i % len(records)] for i in range(needed)]
    return [cycled[i : i + batch_size] for i in range(0, needed, batch_size)]


def model_totals(client: InferenceServerClient) -> dict[str, tuple[int, float]]:
    """Each of `MODELS`' successful requests so far and the ms they took, warm-up included."""
    stats = client.get_inference_statistics("", as_json=True).get("model_stats", [])
    totals = dict.fromkeys(MODELS, (0, 0.0))
    for model in stats:
        if model.get("name") in totals:
            success = model.get("inference_stats", {}).get("success", {})
            count, ms = totals[model["name"]]
            totals[model["name"]] = (
                count + int(success.get("count", 0)),
                ms + int(success.get("ns", 0)) / 1e6,
            )
    return totals


def ms_of_next_request(
    client: InferenceServerClient, before: dict[str, tuple[int, float]]
) -> dict[str, float]:
    """Each model's ms on the one request answered since `before` was read.

    Triton counts a model's request when it releases it, which can be just after the client
    has its answer: the statistics are read again until every model counts one more request
    (for at most `STATISTICS_WAIT_S`).
    """
    deadline = time.monotonic() + STATISTICS_WAIT_S
    while True:
        after = model_totals(client)
        settled = all(after[m][0] > before[m][0] for m in MODELS)
        if settled or time.monotonic() > deadline:
            return {m: after[m][1] - before[m][1] for m in MODELS}
        time.sleep(0.01)


def measure_start(
    repository_dir: Path, batches: Sequence[Sequence[Record]], workdir: Path
) -> Start:
    """Start a server on `repository_dir`, time `batches` in order, one request each, stop it.

    Raises:
        BenchError: the server did not start or a request failed.
    """
    started = time.perf_counter()
    ports = server.Ports.free()
    try:
        with server.TritonServer(repository_dir, workdir=workdir, ports=ports) as triton:
            ready_s = time.perf_counter() - started
            with (
                UbmClient(triton.grpc_url, timeout_s=REQUEST_TIMEOUT_S) as client,
                InferenceServerClient(triton.grpc_url) as statistics_client,
            ):
                client.is_ready()  # connects the channel before the clock starts
                before = model_totals(statistics_client)
                first_ms = timed_ms(client, batches[0])
                first_model_ms = ms_of_next_request(statistics_client, before)
                follow_ups_ms = [timed_ms(client, batch) for batch in batches[1:]]
    except (server.ServerError, UbmError, InferenceServerException) as e:
        raise BenchError(f"serving {repository_dir} failed: {e}") from e
    return Start(
        ready_s=ready_s,
        first_ms=first_ms,
        follow_up_ms=statistics.median(follow_ups_ms),
        first_model_ms=first_model_ms,
    )


def timed_ms(client: UbmClient, batch: Sequence[Record]) -> float:
    """The latency of scoring `batch` in one request."""
    sent = time.perf_counter()
    client.score_batch(batch)
    return (time.perf_counter() - sent) * 1000.0


def _median(starts: Sequence[Start]) -> dict:
    """`Start`'s fields as dicts, each the median over `starts`."""
    return {
        "ready_s": statistics.median(start.ready_s for start in starts),
        "first_ms": statistics.median(start.first_ms for start in starts),
        "follow_up_ms": statistics.median(start.follow_up_ms for start in starts),
        "first_model_ms": {
            model: statistics.median(start.first_model_ms[model] for start in starts)
            for model in MODELS
        },
    }


def run(
    settings: FirstRequestSettings,
    *,
    repository_dir: Path,
    records_path: Path,
    workdir: Path,
    log: Log = print,
) -> dict:
    """Measure the repository and its copy without warm-up; the results as a JSON-ready dict.

    Raises:
        BenchError: the repository has no warm-up, a server did not start, or a request failed.
    """
    samples = warmup_samples(repository_dir)
    if not samples:
        raise BenchError(
            f"{repository_dir} has no model_warmup in any config: write it again to compare"
        )
    repositories = {
        WITH_WARMUP: repository_dir,
        WITHOUT_WARMUP: strip_warmup(repository_dir, workdir / "repository_without_warmup"),
    }
    batches = example_batches(records_path, settings.follow_ups + 1, settings.batch_size)
    starts: dict[str, list[Start]] = {variant: [] for variant in VARIANTS}
    rounds = []
    for round_ in range(settings.rounds):
        order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
        measured = {}
        for variant in order:
            start = measure_start(repositories[variant], batches, workdir / "server" / variant)
            starts[variant].append(start)
            measured[variant] = asdict(start)
            log(
                f"round {round_ + 1} {variant}: ready after {start.ready_s:.1f} s, first request"
                f" {start.first_ms:.1f} ms, then median {start.follow_up_ms:.1f} ms"
            )
        rounds.append({"order": list(order), **measured})
    medians = {variant: _median(starts[variant]) for variant in VARIANTS}
    return {
        "created": report.created(),
        "cores": report.usable_cores(),
        "repository": paths.shown(repository_dir),
        "records": paths.shown(records_path),
        "warmup_samples": samples,
        "rounds": settings.rounds,
        "follow_ups": settings.follow_ups,
        "batch_size": settings.batch_size,
        "measured": rounds,
        "median": medians,
        "first_request_ratio": medians[WITHOUT_WARMUP]["first_ms"]
        / medians[WITH_WARMUP]["first_ms"],
    }


def print_table(result: dict, console: Console) -> None:
    """Each variant's medians, and how much slower the first request is without warm-up."""
    table = report.results_table(
        f"first request after a start, {result['batch_size']} record(s) per request,"
        f" {result['cores']} cores, median of {result['rounds']} start(s)"
    )
    table.add_column("repository", no_wrap=True)
    for column in ("ready s", "first ms", "next ms", "first/next", *MODELS):
        table.add_column(column, justify="right", no_wrap=True)
    for variant in VARIANTS:
        median = result["median"][variant]
        table.add_row(
            variant,
            f"{median['ready_s']:.1f}",
            f"{median['first_ms']:.1f}",
            f"{median['follow_up_ms']:.1f}",
            f"{median['first_ms'] / median['follow_up_ms']:.1f}",
            *(f"{median['first_model_ms'][model]:.1f}" for model in MODELS),
        )
    console.print(table)
    console.print(
        f"  next ms: the median of the {result['follow_ups']} requests after the first;"
        f" {', '.join(MODELS)}: each model's ms on the first request (Triton's statistics)",
        highlight=False,
        soft_wrap=True,
    )
    samples = ", ".join(f"{model} {n}" for model, n in result["warmup_samples"].items())
    console.print(f"warm-up samples: {samples}", highlight=False)
    console.print(
        f"first request without warm-up / with warm-up: {result['first_request_ratio']:.2f}",
        highlight=False,
    )


@click.command(help=__doc__.split("\n\n")[0].replace("`", ""))
@count_option("--rounds", DEFAULTS.rounds, "Starts of each repository, taking turns.")
@count_option("--follow-ups", DEFAULTS.follow_ups, "Requests timed after the first.")
@batch_size_option(DEFAULTS.batch_size, "Records per request.")
@options.repository(help_text="The model repository, written with warm-up.")
@click.option(
    "--records",
    "records_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=paths.EXAMPLE_RECORDS,
    show_default=True,
    help="JSON-lines records to send.",
)
@options.run_dir(paths.RUN_DIR / "first_request")
@options.out_file(paths.RESULTS / "first_request.json")
def main(
    rounds: int,
    follow_ups: int,
    batch_size: int,
    repository_dir: Path,
    records_path: Path,
    run_dir: Path,
    out: Path,
) -> None:
    """Measure both repositories and write the medians."""
    console = report.wide_console(stderr=True)
    settings = FirstRequestSettings(rounds, follow_ups, batch_size)
    with click_errors():
        result = run(
            settings,
            repository_dir=repository_dir,
            records_path=records_path,
            workdir=run_dir,
            log=report.console_log(console),
        )
    print_table(result, console)
    console.print(f"wrote {report.write(result, out)}")


if __name__ == "__main__":
    main()
