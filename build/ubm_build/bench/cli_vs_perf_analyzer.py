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

The order alternates between rounds, and the medians are reported: on a small shared machine
one pair of runs can differ by 15% either way.

perf_analyzer's ``Inferences/Second`` already counts records (requests x batch size); the
server's own statistics for the run give the records per request as a check. perf_analyzer asks
for every output of the ensemble (the 384-float embedding too); the CLI, as run by users, only
for ``purchase_probability``.

How perf_analyzer is found and run: `ubm_build.bench.perf_analyzer`.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
import subprocess
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table
from tritonclient.grpc import InferenceServerClient

from ubm import config, contract
from ubm_build import options, paths
from ubm_build.bench import perf_analyzer
from ubm_build.serving import repository as repository_module
from ubm_build.serving import server

TARGET_RATIO = 0.9
"""The CLI should reach at least this share of perf_analyzer's records/s."""


class BenchError(click.ClickException):
    """perf_analyzer or the CLI could not be run, or failed."""


# -- ubm-client ---------------------------------------------------------------------------------


def ubm_client_binary() -> Path:
    return Path(sysconfig.get_path("scripts")) / "ubm-client"


@dataclass(frozen=True)
class CliResult:
    lines: int
    seconds: float
    """Wall time of the whole command."""
    startup_s: float
    """Wall time of the same command on an empty file: interpreter, imports, channel."""
    records_per_s: float
    """lines / seconds."""
    records_per_s_excluding_startup: float
    server_steady_records_per_s: float | None
    """Records/s the server finished for the CLI between 20% and 80% of its run: no start-up,
    ramp-up or tail, like perf_analyzer's windows."""
    cpu_s: float
    """CPU time (user + system) the CLI process used."""
    command: str


def cli_command(url: str, path: Path, batch_size: int, concurrency: int) -> list[str]:
    return [
        str(ubm_client_binary()),
        "score",
        str(path),
        "--url",
        url,
        "--batch-size",
        str(batch_size),
        "--concurrency",
        str(concurrency),
        "-q",
        "-o",
        os.devnull,
    ]


def _timed(command: list[str]) -> tuple[float, float]:
    """Run `command`; its wall time and CPU time, in seconds."""
    cpu_before = perf_analyzer.children_cpu_s()
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    cpu_s = perf_analyzer.children_cpu_s() - cpu_before
    if result.returncode != 0:
        raise BenchError(
            f"{shlex.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}"
        )
    return seconds, cpu_s


class EnsembleSampler:
    """Samples the ensemble's records-inferred counter while a run goes on, every `period_s`."""

    def __init__(self, url: str, period_s: float = 0.5) -> None:
        self.url = url
        self.period_s = period_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            client = InferenceServerClient(self.url)
        except Exception:  # a diagnostic only
            return
        with client:
            while not self._stop.is_set():
                try:
                    stats = client.get_inference_statistics(contract.ENSEMBLE, as_json=True)
                    count = int(stats["model_stats"][0].get("inference_count", 0))
                except Exception:
                    return
                self.samples.append((time.perf_counter(), count))
                self._stop.wait(self.period_s)

    def __enter__(self) -> EnsembleSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def middle_rate(
        self, start: float, end: float, lo: float = 0.2, hi: float = 0.8
    ) -> float | None:
        """Records/s the server completed between `lo` and `hi` of the run (start to end)."""
        a, b = start + lo * (end - start), start + hi * (end - start)
        inside = [(t, n) for t, n in self.samples if a <= t <= b]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def write_repeated(lines: list[bytes], n_lines: int, path: Path) -> Path:
    """``lines`` over and over, ``n_lines`` in all."""
    with path.open("wb") as f:
        for i in range(n_lines):
            f.write(lines[i % len(lines)] + b"\n")
    return path


def run_cli(
    url: str,
    lines: list[bytes],
    n_lines: int,
    *,
    batch_size: int,
    concurrency: int,
    workdir: Path,
) -> CliResult:
    empty = workdir / "empty.jsonl"
    empty.write_bytes(b"")
    startup_s, _ = _timed(cli_command(url, empty, batch_size, concurrency))
    command = cli_command(
        url, write_repeated(lines, n_lines, workdir / "cli.jsonl"), batch_size, concurrency
    )
    with EnsembleSampler(url) as sampler:
        started = time.perf_counter()
        seconds, cpu_s = _timed(command)
    steady = sampler.middle_rate(started, started + seconds)
    return CliResult(
        lines=n_lines,
        seconds=round(seconds, 3),
        startup_s=round(startup_s, 3),
        cpu_s=round(cpu_s, 2),
        records_per_s=n_lines / seconds,
        records_per_s_excluding_startup=n_lines / max(seconds - startup_s, 1e-9),
        server_steady_records_per_s=steady,
        command=shlex.join(command),
    )


# -- the comparison -----------------------------------------------------------------------------


def cli_lines_for(rate: float, seconds: float, batch_size: int, minimum: int) -> int:
    """Lines for about `seconds` of work at `rate` records/s, whole batches, at least `minimum`."""
    return max(minimum, math.ceil(rate * seconds / batch_size) * batch_size)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Round:
    order: tuple[str, str]
    perf_analyzer: perf_analyzer.PerfAnalyzerResult
    cli: CliResult

    @property
    def ratio(self) -> float:
        return self.cli.records_per_s / self.perf_analyzer.records_per_s

    def to_dict(self) -> dict:
        return {
            "order": list(self.order),
            "ratio": round(self.ratio, 4),
            "perf_analyzer": asdict(self.perf_analyzer),
            "cli": asdict(self.cli),
        }


def compare(
    url: str,
    records: list[bytes],
    *,
    rounds: int,
    batch_size: int,
    concurrency: int,
    cli_seconds: float,
    cli_lines: int | None,
    measurement_interval_ms: int,
    max_trials: int,
    stability_percentage: float,
    warmup: bool,
    workdir: Path,
    log: Callable[[str], None] = lambda _: None,
) -> list[Round]:
    """Warm the server up, then `rounds` rounds of perf_analyzer and the CLI.

    The order alternates (perf_analyzer first in odd rounds), so that a drift of the machine's
    speed does not always favour the same client. Every CLI run scores the same lines: about
    `cli_seconds` of work at the first perf_analyzer run's rate.
    """
    if warmup:
        log(f"warm-up: the CLI scores the {len(records)} records once")
        run_cli(
            url,
            records,
            len(records),
            batch_size=batch_size,
            concurrency=concurrency,
            workdir=workdir,
        )
    input_data = perf_analyzer.write_input_data(records, workdir / "perf_analyzer_input.json")

    def run_perf_analyzer() -> perf_analyzer.PerfAnalyzerResult:
        return perf_analyzer.run(
            url,
            input_data,
            batch_size=batch_size,
            concurrency=concurrency,
            measurement_interval_ms=measurement_interval_ms,
            max_trials=max_trials,
            stability_percentage=stability_percentage,
            workdir=workdir,
        )

    def cli(n_lines: int) -> CliResult:
        return run_cli(
            url, records, n_lines, batch_size=batch_size, concurrency=concurrency, workdir=workdir
        )

    done: list[Round] = []
    n_lines = cli_lines
    for i in range(rounds):
        if i % 2 == 0 or n_lines is None:
            log(f"round {i + 1}/{rounds}: perf_analyzer, then the CLI")
            pa = run_perf_analyzer()
            if n_lines is None:
                n_lines = cli_lines_for(pa.records_per_s, cli_seconds, batch_size, len(records))
            done.append(Round(("perf_analyzer", "cli"), pa, cli(n_lines)))
        else:
            log(f"round {i + 1}/{rounds}: the CLI, then perf_analyzer")
            c = cli(n_lines)
            done.append(Round(("cli", "perf_analyzer"), run_perf_analyzer(), c))
    return done


def result_dict(
    rounds: list[Round],
    *,
    batch_size: int,
    concurrency: int,
    records: int,
    records_file: Path,
    variant: str | None,
    measurement_interval_ms: int,
    max_trials: int,
    stability_percentage: float,
) -> dict:
    """Medians over the rounds, and every round."""
    pa = statistics.median(r.perf_analyzer.records_per_s for r in rounds)
    cli = statistics.median(r.cli.records_per_s for r in rounds)
    cli_net = statistics.median(r.cli.records_per_s_excluding_startup for r in rounds)
    steady = [r.cli.server_steady_records_per_s for r in rounds]
    ratio = cli / pa
    return {
        "cli_records_per_s": round(cli, 2),
        "perf_analyzer_records_per_s": round(pa, 2),
        "ratio": round(ratio, 4),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "round_ratios": [round(r.ratio, 4) for r in rounds],
        "ratio_excluding_cli_startup": round(cli_net / pa, 4),
        "ratio_steady": (
            round(statistics.median(steady) / pa, 4) if all(x is not None for x in steady) else None
        ),
        "concurrency": concurrency,
        "batch_size": batch_size,
        "records": records,
        "records_file": paths.shown(records_file),
        "cli_lines": rounds[0].cli.lines,
        "served_variant": variant,
        "cores": cores(),
        "perf_analyzer_settings": {
            "measurement_interval_ms": measurement_interval_ms,
            "max_trials": max_trials,
            "stability_percentage": stability_percentage,
            "tritonclient": _version("tritonclient"),
        },
        "rounds": [r.to_dict() for r in rounds],
        "outputs": (
            "perf_analyzer requests both ensemble outputs (purchase_probability and the "
            "384-float embedding); the CLI requests purchase_probability only, as users run it"
        ),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def print_table(result: dict, console: Console) -> None:
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
@click.option(
    "--batch-size",
    type=click.IntRange(1, contract.MAX_BATCH_SIZE),
    default=config.DEFAULT_BATCH_SIZE,
    show_default=True,
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=config.DEFAULT_MAX_IN_FLIGHT,
    show_default=True,
)
@click.option(
    "--cli-seconds",
    type=click.FloatRange(min=0),
    default=15.0,
    show_default=True,
    help="About how long each CLI run lasts, at the first perf_analyzer run's rate.",
)
@click.option("--cli-lines", type=click.IntRange(min=1), help="Lines for the CLI run instead.")
@click.option(
    "--measurement-interval",
    "measurement_interval_ms",
    type=click.IntRange(min=100),
    default=5000,
    show_default=True,
    help="perf_analyzer's window, ms.",
)
@click.option("--max-trials", type=click.IntRange(min=3), default=4, show_default=True)
@click.option("--stability-percentage", type=float, default=10.0, show_default=True)
@click.option("--warmup/--no-warmup", default=True, show_default=True)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="perf_analyzer + CLI rounds, in alternating order; the medians are reported.",
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
    problem = perf_analyzer.problem()
    if problem:
        raise BenchError(problem)
    records = perf_analyzer.read_records(records_file, limit)
    console = Console()
    settings = {
        "batch_size": batch_size,
        "concurrency": concurrency,
        "cli_seconds": cli_seconds,
        "cli_lines": cli_lines,
        "measurement_interval_ms": measurement_interval_ms,
        "max_trials": max_trials,
        "stability_percentage": stability_percentage,
        "warmup": warmup,
        "rounds": rounds,
        "log": lambda message: console.print(message, style="dim"),
    }
    with tempfile.TemporaryDirectory(prefix="ubm_bench_cli_") as tmp:
        workdir = Path(tmp)
        if url:
            variant = None
            done = compare(url, records, workdir=workdir, **settings)
        else:
            variant = repository_module.served_variant(repository_dir, onnx_dir)
            ports = server.Ports.free()
            console.print(f"starting tritonserver on {repository_dir} (gRPC port {ports.grpc})")
            triton = server.TritonServer(repository_dir, workdir=workdir / "triton", ports=ports)
            try:
                with triton:
                    done = compare(triton.grpc_url, records, workdir=workdir, **settings)
            except server.ServerError as e:
                raise BenchError(str(e)) from e
            except (BenchError, perf_analyzer.PerfAnalyzerError) as e:
                raise BenchError(f"{e.message}\n{triton.log_tail()}") from e
    result = result_dict(
        done,
        batch_size=batch_size,
        concurrency=concurrency,
        records=len(records),
        records_file=records_file,
        variant=variant,
        measurement_interval_ms=measurement_interval_ms,
        max_trials=max_trials,
        stability_percentage=stability_percentage,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result, console)
    console.print(f"written: {paths.shown(out)}")


if __name__ == "__main__":
    main()
