"""`python -m ubm_build.bench.tune` (`make tune`): what each serving knob buys, measured in one run.

Writes one model repository per entry of `TUNINGS` below (the same model and encoder variant),
serves each from its own tritonserver and measures it like `make bench` does: 32-record requests
at concurrency 1 and 16, and one record per request at concurrency 1 (for p99 latency). Each
served row carries Triton's per-model queue/compute split. With ``--rounds N`` every tuning is
measured N times, the tunings taking turns, and the median round is reported, so that a drift
of the machine's speed does not favour one tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import click
from rich.console import Console

from ubm_build import export, options, paths
from ubm_build.bench import report, served
from ubm_build.bench.commands import click_errors, count_option
from ubm_build.bench.report import Log
from ubm_build.bench.rows import Row, median_row
from ubm_build.bench.served import served_row
from ubm_build.bench.workload import Batch, batches_of, sample_records
from ubm_build.model.network import BehaviourModel
from ubm_build.serving import server
from ubm_build.serving.repository import Tuning, served_variant


@dataclass(frozen=True)
class TuningCase:
    """One serving configuration to measure, and what sets it apart."""

    description: str
    tuning: Tuning


SHIPPED = Tuning()
TUNINGS: dict[str, TuningCase] = {
    "untuned": TuningCase(
        "whole batches per ONNX Runtime run, 2 ms queue delay (before tuning)",
        replace(SHIPPED, encoder_rows_per_run=0, max_queue_delay_us=2000),
    ),
    "slices": TuningCase(
        "+ encoder runs 8 records at a time", replace(SHIPPED, max_queue_delay_us=2000)
    ),
    "defaults": TuningCase("+ no queue delay: the shipped defaults", SHIPPED),
    "slices_4": TuningCase("defaults, 4 records per run", replace(SHIPPED, encoder_rows_per_run=4)),
    "slices_16": TuningCase(
        "defaults, 16 records per run", replace(SHIPPED, encoder_rows_per_run=16)
    ),
    "encoder_2x1": TuningCase(
        "defaults, 2 encoder instances of 1 thread",
        replace(SHIPPED, encoder_instances=2, encoder_threads=1),
    ),
    "streams_2": TuningCase(
        "defaults, an OpenVINO encoder runs 2 slices at once (2 streams of 1 thread)",
        replace(SHIPPED, encoder_streams=2),
    ),
    "preprocess_2": TuningCase(
        "defaults, 2 preprocess instances", replace(SHIPPED, preprocess_instances=2)
    ),
}
BATCH_SIZE = 32
ROWS = ("served_c1", "served_c16", "served_c1_single")


@dataclass(frozen=True)
class TuneSettings:
    """What `run` measures."""

    records: int = 1024
    """Records sent in `BATCH_SIZE`-record requests."""
    single_records: int = 256
    """Records sent one per request, for the latency row."""
    rounds: int = 3
    """Times each tuning is measured, the tunings taking turns."""
    tunings: tuple[str, ...] = tuple(TUNINGS)
    """Names in `TUNINGS`, in the order measured."""


DEFAULTS = TuneSettings()


def measure(
    repository_dir: Path, batches: Sequence[Batch], singles: Sequence[Batch], workdir: Path
) -> dict[str, Row]:
    """The three served rows against a tritonserver of its own on `repository_dir`."""
    ports = server.Ports.free()
    with server.TritonServer(repository_dir, workdir=workdir, ports=ports) as triton:
        url, metrics = triton.grpc_url, triton.metrics_url
        served.warm_up(url, batches[:4])
        return {
            "served_c1": served_row(url, batches, 1, metrics),
            "served_c16": served_row(url, batches, 16, metrics),
            "served_c1_single": served_row(url, singles, 1, metrics),
        }


def run(
    settings: TuneSettings,
    *,
    model_dir: Path,
    onnx_dir: Path,
    encoder_variant: str,
    workdir: Path,
    log: Log = print,
) -> dict:
    """Measure `settings.tunings` in `settings.rounds` rounds, each with the encoder variant
    `encoder_variant` of `onnx_dir`; the results as a JSON-ready dict."""
    model = BehaviourModel.load(model_dir)
    chosen = sample_records(settings.records)
    batches = batches_of(chosen, BATCH_SIZE)
    singles = batches_of(chosen[: settings.single_records], 1)
    repositories = {
        name: served.variant_repository(
            workdir / "repositories" / name,
            model_dir,
            onnx_dir,
            encoder_variant,
            TUNINGS[name].tuning,
        )
        for name in settings.tunings
    }
    measured: dict[str, list[dict[str, Row]]] = {name: [] for name in settings.tunings}
    for round_ in range(settings.rounds):
        order: Sequence[str] = settings.tunings if round_ % 2 == 0 else settings.tunings[::-1]
        for name in order:
            rows = measure(repositories[name], batches, singles, workdir / "server" / name)
            measured[name].append(rows)
            log(
                f"round {round_ + 1} {name}: c1 {rows['served_c1'].records_per_s:.1f},"
                f" c16 {rows['served_c16'].records_per_s:.1f} records/s, one record at c1:"
                f" p99 {rows['served_c1_single'].p99_ms:.1f} ms"
            )
    return {
        "created": report.created(),
        "cores": report.usable_cores(),
        "records": len(chosen),
        "batch_size": BATCH_SIZE,
        "single_records": len(singles),
        "rounds": settings.rounds,
        "served_variant": encoder_variant,
        "max_length": model.spec.max_length,
        "variants": [
            {
                "name": name,
                "description": TUNINGS[name].description,
                "tuning": asdict(TUNINGS[name].tuning),
                "rows": {
                    row: median_row([r[row] for r in measured[name]]).to_dict() for row in ROWS
                },
            }
            for name in settings.tunings
        ],
    }


def print_table(result: dict, console: Console) -> None:
    """Each tuning's median round: records/s at concurrency 1 and 16, one record's p99."""
    table = report.results_table(
        f"served, {result['records']} records in requests of {result['batch_size']},"
        f" {result['cores']} cores, encoder {result['served_variant']},"
        f" median of {result['rounds']} round(s)"
    )
    table.add_column("variant", no_wrap=True)
    for column in ("c1 rec/s", "c16 rec/s", "1 record p99 ms", "encoder ms (c16)"):
        table.add_column(column, justify="right", no_wrap=True)
    for measured in result["variants"]:
        rows = measured["rows"]
        encoder = (rows["served_c16"]["server"] or {}).get("encoder")
        split = f"{encoder['queue_ms']:.0f} + {encoder['compute_ms']:.0f}" if encoder else "-"
        table.add_row(
            measured["name"],
            f"{rows['served_c1']['records_per_s']:.1f}",
            f"{rows['served_c16']['records_per_s']:.1f}",
            f"{rows['served_c1_single']['p99_ms']:.1f}",
            split,
        )
    console.print(table)
    for measured in result["variants"]:
        console.print(f"  {measured['name']}: {measured['description']}", highlight=False)


@click.command(help=__doc__.split("\n\n")[0].replace("`", ""))
@count_option("--records", DEFAULTS.records)
@count_option("--single-records", DEFAULTS.single_records)
@count_option("--rounds", DEFAULTS.rounds)
@click.option(
    "--only",
    type=click.Choice(list(TUNINGS)),
    multiple=True,
    help="Measure only these variants (repeatable)  [default: all].",
)
@options.model_dir()
@options.onnx_dir()
@options.repository(
    written=True,
    help_text="Its encoder variant is the one measured (else the fastest that passed its check).",
)
@options.run_dir(paths.RUN_DIR / "tune")
@options.out_file(paths.RESULTS / "tuning.json")
def main(
    records: int,
    single_records: int,
    rounds: int,
    only: tuple[str, ...],
    model_dir: Path,
    onnx_dir: Path,
    repository_dir: Path,
    run_dir: Path,
    out: Path,
) -> None:
    """Measure the tunings and write their median rounds."""
    console = report.wide_console(stderr=True)
    encoder_variant = (
        served_variant(repository_dir, onnx_dir)
        or export.fastest_passing(export.read_reports(onnx_dir)).variant
    )
    settings = TuneSettings(records, single_records, rounds, only or DEFAULTS.tunings)
    with click_errors():
        result = run(
            settings,
            model_dir=model_dir,
            onnx_dir=onnx_dir,
            encoder_variant=encoder_variant,
            workdir=run_dir,
            log=report.console_log(console),
        )
    print_table(result, console)
    console.print(f"wrote {report.write(result, out)}")


if __name__ == "__main__":
    main()
