"""`python -m ubm_build.bench.tune` (`make tune`): what each serving knob buys, measured in one run.

Writes one model repository per `Tuning` below (the same model and encoder variant), serves
each from its own tritonserver and measures it like `make bench` does: 32-record requests at
concurrency 1 and 16, and one record per request at concurrency 1 (for p99 latency). Each
served row carries Triton's per-model queue/compute split. With ``--rounds N`` every variant is
measured N times, the variants taking turns, and the median round is reported: on a small
shared machine two runs of the same thing can differ by 10%.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import click
from rich.console import Console

from ubm_build import export, options, paths, steps
from ubm_build.bench import benchmark as bench
from ubm_build.model.network import BehaviourModel
from ubm_build.serving import server
from ubm_build.serving.repository import RepositorySpec, Tuning, served_variant, write_repository

DEFAULTS = Tuning()
VARIANTS: dict[str, tuple[str, Tuning]] = {
    "untuned": (
        "whole batches per ONNX Runtime run, 2 ms queue delay (before tuning)",
        replace(DEFAULTS, encoder_rows_per_run=0, max_queue_delay_us=2000),
    ),
    "slices": (
        "+ encoder runs 8 records at a time",
        replace(DEFAULTS, max_queue_delay_us=2000),
    ),
    "defaults": ("+ no queue delay: the shipped defaults", DEFAULTS),
    "slices_4": ("defaults, 4 records per run", replace(DEFAULTS, encoder_rows_per_run=4)),
    "slices_16": ("defaults, 16 records per run", replace(DEFAULTS, encoder_rows_per_run=16)),
    "encoder_2x1": (
        "defaults, 2 encoder instances of 1 thread",
        replace(DEFAULTS, encoder_instances=2, encoder_threads=1),
    ),
    "preprocess_2": ("defaults, 2 preprocess instances", replace(DEFAULTS, preprocess_instances=2)),
}
BATCH_SIZE = 32
ROWS = ("served_c1", "served_c16", "served_c1_single")


def measure(repository: Path, batches, singles, workdir: Path) -> dict[str, bench.Row]:
    """The three served rows against a tritonserver of its own on `repository`."""
    with server.TritonServer(repository, workdir=workdir, ports=server.Ports.free()) as triton:
        url, metrics = triton.grpc_url, triton.metrics_url
        bench.bench_served(url, batches[:4], 1)  # warm-up
        return {
            "served_c1": bench.bench_served(url, batches, 1, metrics),
            "served_c16": bench.bench_served(url, batches, 16, metrics),
            "served_c1_single": bench.bench_served(url, singles, 1, metrics),
        }


def run(
    *,
    model_dir: Path,
    onnx_dir: Path,
    variant: str,
    records: int,
    single_records: int,
    rounds: int,
    names: list[str],
    workdir: Path,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure the `names` variants in `rounds` rounds; the results as a JSON-ready dict."""
    model = BehaviourModel.load(model_dir)
    encoder = onnx_dir / f"encoder-{variant}.onnx"
    chosen = bench.sample_records(records)
    batches = bench.batches_of(chosen, BATCH_SIZE)
    singles = bench.batches_of(chosen[:single_records], 1)
    repositories = {}
    for name in names:
        spec = RepositorySpec(
            max_length=model.spec.max_length,
            hidden_size=model.spec.hidden_size,
            n_features=len(model.spec.feature_names),
            tuning=VARIANTS[name][1],
        )
        repositories[name] = write_repository(
            workdir / "repositories" / name,
            spec,
            tokenizer_json=model_dir / "tokenizer.json",
            encoder_onnx=encoder,
            head_onnx=onnx_dir / "head.onnx",
        )
    measured: dict[str, list[dict[str, bench.Row]]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            rows = measure(repositories[name], batches, singles, workdir / "server" / name)
            measured[name].append(rows)
            log(
                f"round {round_ + 1} {name}: c1 {rows['served_c1'].records_per_s:.1f},"
                f" c16 {rows['served_c16'].records_per_s:.1f} records/s, one record at c1:"
                f" p99 {rows['served_c1_single'].p99_ms:.1f} ms"
            )
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cores": len(os.sched_getaffinity(0)),
        "records": len(chosen),
        "batch_size": BATCH_SIZE,
        "single_records": len(singles),
        "rounds": rounds,
        "served_variant": variant,
        "max_length": model.spec.max_length,
        "variants": [
            {
                "name": name,
                "description": VARIANTS[name][0],
                "tuning": asdict(VARIANTS[name][1]),
                "rows": {
                    row: bench.median_row([r[row] for r in measured[name]]).to_dict()
                    for row in ROWS
                },
            }
            for name in names
        ],
    }


def print_table(result: dict, console: Console) -> None:
    table = bench.results_table(
        f"served, {result['records']} records in requests of {result['batch_size']},"
        f" {result['cores']} cores, encoder {result['served_variant']},"
        f" median of {result['rounds']} round(s)"
    )
    table.add_column("variant", no_wrap=True)
    for column in ("c1 rec/s", "c16 rec/s", "1 record p99 ms", "encoder ms (c16)"):
        table.add_column(column, justify="right", no_wrap=True)
    for variant in result["variants"]:
        rows = variant["rows"]
        encoder = (rows["served_c16"]["server"] or {}).get("encoder")
        split = f"{encoder['queue_ms']:.0f} + {encoder['compute_ms']:.0f}" if encoder else "-"
        table.add_row(
            variant["name"],
            f"{rows['served_c1']['records_per_s']:.1f}",
            f"{rows['served_c16']['records_per_s']:.1f}",
            f"{rows['served_c1_single']['p99_ms']:.1f}",
            split,
        )
    console.print(table)
    for variant in result["variants"]:
        console.print(f"  {variant['name']}: {variant['description']}", highlight=False)


@click.command(help=__doc__.split("\n\n")[0].replace("`", ""))
@click.option("--records", type=click.IntRange(1), default=1024, show_default=True)
@click.option("--single-records", type=click.IntRange(1), default=256, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "--only",
    type=click.Choice(list(VARIANTS)),
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
def main(records, single_records, rounds, only, model_dir, onnx_dir, repository_dir, run_dir, out):
    console = bench.wide_console(stderr=True)
    variant = (
        served_variant(repository_dir, onnx_dir)
        or export.fastest_passing(steps.load_variants(onnx_dir)).variant
    )
    result = run(
        model_dir=model_dir,
        onnx_dir=onnx_dir,
        variant=variant,
        records=records,
        single_records=single_records,
        rounds=rounds,
        names=list(only or VARIANTS),
        workdir=run_dir,
        log=lambda message: console.print(message, highlight=False, soft_wrap=True),
    )
    print_table(result, console)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
