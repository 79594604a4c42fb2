"""`python -m ubm_build.bench.cli_vs_perf_analyzer` (`make bench-cli`): `ubm-client score`
against NVIDIA's `perf_analyzer`, on the same ensemble, records, batch size and concurrency.

Both load one tritonserver that this command starts on free ports (or the one at ``--url``).
After a warm-up (the CLI scores every record once, untimed) come ``--rounds`` rounds of:

- ``perf_analyzer`` (the C++ binary shipped in the ``tritonclient`` wheel) sending ``-b B``
  records per gRPC request with ``C`` requests in flight, until three measurement windows agree
  (or ``--max-trials`` windows). Its input holds one record per data step; a request of batch B
  takes B consecutive steps, so its batches are the CLI's batches of the same records file.
- ``ubm-client score FILE --batch-size B --concurrency C -q -o /dev/null`` on the records file
  repeated to about ``--cli-seconds`` of work at the first perf_analyzer run's rate. The CLI's
  figure is lines / wall time of the whole command, start-up and the last, partly filled round
  of requests included. Beside it: the start-up (the same command on an empty file), the rate
  the server's own counter shows between 20% and 80% of the run (no start-up, ramp-up or tail,
  as in perf_analyzer's windows), and the CPU time each client used.

The order alternates between rounds, and the medians are reported, so that a drift of the
machine's speed during the run does not favour either client.

perf_analyzer's ``Inferences/Second`` already counts records (requests x batch size); the
server's own statistics for the run give the records per request as a check. perf_analyzer asks
for every output of the ensemble (the 384-float embedding too); the CLI, as run by users, only
for ``purchase_probability``.

The measurements: `ubm_build.bench.comparison` (rounds), `cli_client` and `perf_analyzer`.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table

from ubm import config
from ubm_build import options, paths
from ubm_build.bench import perf_analyzer, report
from ubm_build.bench.commands import batch_size_option, click_errors, count_option
from ubm_build.bench.comparison import (
    TARGET_RATIO,
    ComparisonSettings,
    compare,
    comparison_result,
)
from ubm_build.bench.errors import BenchError
from ubm_build.bench.perf_analyzer import PerfAnalyzerSettings
from ubm_build.bench.workload import read_lines
from ubm_build.serving import server
from ubm_build.serving.repository import served_variant

PERF_ANALYZER_DEFAULTS = PerfAnalyzerSettings(
    batch_size=config.DEFAULT_BATCH_SIZE, concurrency=config.DEFAULT_MAX_IN_FLIGHT
)
DEFAULTS = ComparisonSettings(perf_analyzer=PERF_ANALYZER_DEFAULTS)


def print_table(result: dict, console: Console) -> None:
    """Every round and the medians, then what the figures mean."""
    table = Table(
        title=(
            f"ubm ensemble, batch {result['batch_size']}, concurrency {result['concurrency']}, "
            f"{result['records']} records, {result['cores']} cores, "
            f"served encoder {result['served_variant'] or 'unknown'}"
        ),
        box=box.SIMPLE,
    )
    columns = ["round", "first", "perf_analyzer", "ubm-client", "ubm-client steady", "ratio"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("round", "first") else "right")
    steady = [r["cli"]["server_steady_records_per_s"] for r in result["rounds"]]
    for i, r in enumerate(result["rounds"], start=1):
        pa, cli = r["perf_analyzer"], r["cli"]
        table.add_row(
            str(i),
            "pa" if r["order"][0] == "perf_analyzer" else "cli",
            f"{pa['records_per_s']:.1f}" + ("" if pa["stable"] else "*"),
            f"{cli['records_per_s']:.1f}",
            f"{steady[i - 1]:.1f}" if steady[i - 1] else "-",
            f"{r['ratio']:.3f}",
        )
    table.add_row(
        "median",
        "",
        f"{result['perf_analyzer_records_per_s']:.1f}",
        f"{result['cli_records_per_s']:.1f}",
        f"{statistics.median(steady):.1f}" if all(steady) else "-",
        f"{result['ratio']:.3f}",
    )
    console.print(table)
    verdict = "meets" if result["meets_target"] else "MISSES"
    first = result["rounds"][0]
    steady_ratio = f"{result['ratio_steady']:.3f}" if result["ratio_steady"] else "-"
    console.print(
        f"records/s. ratio {result['ratio']:.3f} {verdict} the {TARGET_RATIO:.0%} target "
        f"(steady {steady_ratio}). ubm-client: {result['cli_lines']} lines per run, wall time "
        f"of the whole command (start-up {first['cli']['startup_s']:.1f} s, "
        f"{first['cli']['cpu_s']:.1f} CPU s); steady: the server's count from 20% to 80% of "
        f"its run. perf_analyzer: {first['perf_analyzer']['cpu_s']:.1f} CPU s per run, windows "
        f"of {result['perf_analyzer_settings']['measurement_interval_ms']} ms; * no three "
        "windows within its stability percentage: the mean of the last three."
    )


@click.command()
@options.repository(help_text="Model repository to serve on free ports (ignored with --url).")
@click.option("--url", help="Benchmark the server already at this gRPC HOST:PORT instead.")
@options.onnx_dir(written=True)
@click.option(
    "--records-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=paths.EXAMPLE_RECORDS,
    show_default=True,
)
@click.option("--records", "limit", type=click.IntRange(min=1), help="Use the first N records.")
@batch_size_option(PERF_ANALYZER_DEFAULTS.batch_size)
@count_option("--concurrency", PERF_ANALYZER_DEFAULTS.concurrency)
@click.option(
    "--cli-seconds",
    type=click.FloatRange(min=0),
    default=DEFAULTS.cli_seconds,
    show_default=True,
    help="About how long each CLI run lasts, at the first perf_analyzer run's rate.",
)
@click.option("--cli-lines", type=click.IntRange(min=1), help="Lines for the CLI run instead.")
@click.option(
    "--measurement-interval",
    "measurement_interval_ms",
    type=click.IntRange(min=100),
    default=PERF_ANALYZER_DEFAULTS.measurement_interval_ms,
    show_default=True,
    help="perf_analyzer's window, ms.",
)
@click.option(
    "--max-trials",
    type=click.IntRange(min=3),
    default=PERF_ANALYZER_DEFAULTS.max_trials,
    show_default=True,
)
@click.option(
    "--stability-percentage",
    type=float,
    default=PERF_ANALYZER_DEFAULTS.stability_percentage,
    show_default=True,
)
@click.option("--warmup/--no-warmup", default=DEFAULTS.warmup, show_default=True)
@count_option(
    "--rounds",
    DEFAULTS.rounds,
    "perf_analyzer + CLI rounds, in alternating order; the medians are reported.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=paths.RESULTS / "cli_vs_perf_analyzer.json",
    show_default=True,
)
def main(
    repository_dir: Path,
    url: str | None,
    onnx_dir: Path,
    records_file: Path,
    limit: int | None,
    batch_size: int,
    concurrency: int,
    cli_seconds: float,
    cli_lines: int | None,
    measurement_interval_ms: int,
    max_trials: int,
    stability_percentage: float,
    warmup: bool,
    rounds: int,
    out: Path,
) -> None:
    """Compare `ubm-client score` records/s with perf_analyzer's on the ubm ensemble."""
    settings = ComparisonSettings(
        perf_analyzer=PerfAnalyzerSettings(
            batch_size=batch_size,
            concurrency=concurrency,
            measurement_interval_ms=measurement_interval_ms,
            max_trials=max_trials,
            stability_percentage=stability_percentage,
        ),
        rounds=rounds,
        cli_seconds=cli_seconds,
        cli_lines=cli_lines,
        warmup=warmup,
    )
    console = Console()

    def log(message: str) -> None:
        console.print(message, style="dim")

    problem = perf_analyzer.problem()
    if problem:
        raise click.ClickException(problem)
    with click_errors(), tempfile.TemporaryDirectory(prefix="ubm_bench_cli_") as tmp:
        records = read_lines(records_file, limit)
        workdir = Path(tmp)
        if url:
            variant = None
            done = compare(url, records, settings, workdir, log)
        else:
            variant = served_variant(repository_dir, onnx_dir)
            ports = server.Ports.free()
            console.print(f"starting tritonserver on {repository_dir} (gRPC port {ports.grpc})")
            triton = server.TritonServer(repository_dir, workdir=workdir / "triton", ports=ports)
            try:
                with triton:
                    done = compare(triton.grpc_url, records, settings, workdir, log)
            except server.ServerError as e:
                raise click.ClickException(str(e)) from e
            except BenchError as e:
                raise click.ClickException(f"{e}\n{triton.log_tail()}") from e
    result = comparison_result(
        done, settings, records=len(records), records_file=records_file, variant=variant
    )
    report.write(result, out)
    print_table(result, console)
    console.print(f"written: {paths.shown(out)}")


if __name__ == "__main__":
    main()
