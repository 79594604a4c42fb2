"""``ubm-client score`` against perf_analyzer on one server, in alternating rounds, and the
medians over them (`make bench-cli`'s measurements)."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from ubm_build import paths
from ubm_build.bench import perf_analyzer
from ubm_build.bench.cli_client import CliResult, run_cli
from ubm_build.bench.perf_analyzer import PerfAnalyzerResult, PerfAnalyzerSettings
from ubm_build.bench.report import Log, created, usable_cores

TARGET_RATIO = 0.9
"""The CLI should reach at least this share of perf_analyzer's records/s."""


@dataclass(frozen=True)
class ComparisonSettings:
    """What `compare` runs."""

    perf_analyzer: PerfAnalyzerSettings
    """perf_analyzer's windows, and the batch size and concurrency of both clients."""
    rounds: int = 3
    """Rounds of perf_analyzer and the CLI, in alternating order."""
    cli_seconds: float = 15.0
    """About how long each CLI run lasts, at the first perf_analyzer run's rate."""
    cli_lines: int | None = None
    """Lines for each CLI run instead of `cli_seconds`."""
    warmup: bool = True
    """Whether the CLI scores every record once, untimed, first."""


@dataclass(frozen=True)
class Round:
    """perf_analyzer and the CLI, one after the other in `order`."""

    order: tuple[str, str]
    perf_analyzer: PerfAnalyzerResult
    cli: CliResult

    @property
    def ratio(self) -> float:
        """The CLI's records/s over perf_analyzer's."""
        return self.cli.records_per_s / self.perf_analyzer.records_per_s

    def to_dict(self) -> dict:
        return {
            "order": list(self.order),
            "ratio": round(self.ratio, 4),
            "perf_analyzer": asdict(self.perf_analyzer),
            "cli": asdict(self.cli),
        }


def cli_lines_for(rate: float, seconds: float, batch_size: int, minimum: int) -> int:
    """Lines for about `seconds` of work at `rate` records/s, whole batches, at least `minimum`."""
    return max(minimum, math.ceil(rate * seconds / batch_size) * batch_size)


def compare(
    url: str,
    records: list[bytes],
    settings: ComparisonSettings,
    workdir: Path,
    log: Log = lambda _: None,
) -> list[Round]:
    """Warm the server up, then `settings.rounds` rounds of perf_analyzer and the CLI.

    The order alternates (perf_analyzer first in odd rounds), so that a drift of the machine's
    speed does not always favour the same client. Every CLI run scores the same lines: about
    `settings.cli_seconds` of work at the first perf_analyzer run's rate.

    Raises:
        BenchError: perf_analyzer (`PerfAnalyzerError`) or the CLI failed.
    """
    load = settings.perf_analyzer

    def cli(n_lines: int) -> CliResult:
        return run_cli(
            url,
            records,
            n_lines,
            batch_size=load.batch_size,
            concurrency=load.concurrency,
            workdir=workdir,
        )

    if settings.warmup:
        log(f"warm-up: the CLI scores the {len(records)} records once")
        cli(len(records))
    input_data = perf_analyzer.write_input_data(records, workdir / "perf_analyzer_input.json")

    def run_perf_analyzer() -> PerfAnalyzerResult:
        return perf_analyzer.run(url, input_data, load, workdir)

    done: list[Round] = []
    n_lines = settings.cli_lines
    for i in range(settings.rounds):
        if i % 2 == 0 or n_lines is None:
            log(f"round {i + 1}/{settings.rounds}: perf_analyzer, then the CLI")
            pa = run_perf_analyzer()
            if n_lines is None:
                n_lines = cli_lines_for(
                    pa.records_per_s, settings.cli_seconds, load.batch_size, len(records)
                )
            done.append(Round(("perf_analyzer", "cli"), pa, cli(n_lines)))
        else:
            log(f"round {i + 1}/{settings.rounds}: the CLI, then perf_analyzer")
            c = cli(n_lines)
            done.append(Round(("cli", "perf_analyzer"), run_perf_analyzer(), c))
    return done


def comparison_result(
    rounds: list[Round],
    settings: ComparisonSettings,
    *,
    records: int,
    records_file: Path,
    variant: str | None,
) -> dict:
    """The results file's content: medians over the rounds, and every round."""
    load = settings.perf_analyzer
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
        "concurrency": load.concurrency,
        "batch_size": load.batch_size,
        "records": records,
        "records_file": paths.shown(records_file),
        "cli_lines": rounds[0].cli.lines,
        "served_variant": variant,
        "cores": usable_cores(),
        "perf_analyzer_settings": {
            "measurement_interval_ms": load.measurement_interval_ms,
            "max_trials": load.max_trials,
            "stability_percentage": load.stability_percentage,
            "tritonclient": _version("tritonclient"),
        },
        "rounds": [r.to_dict() for r in rounds],
        "outputs": (
            "perf_analyzer requests both ensemble outputs (purchase_probability and the "
            "384-float embedding); the CLI requests purchase_probability only, as users run it"
        ),
        "created": created(),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
