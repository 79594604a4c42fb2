"""`python -m ubm_build.bench` (`make bench`): the same records scored from the seeds' way to
the served ensemble, in one run on this machine.

Rows, all on the same test-day sessions:

1. ``seeds_way``: bert-base-cased's architecture (12 layers, hidden 768, vocabulary 28,996,
   random weights), PyTorch eager, one record per call, the [CLS] vector into a linear layer,
   on the first ``--seeds-records`` records (it is slow; its rate does not depend on how many).
2. ``pytorch``: our trained model (`BehaviourModel.load`), PyTorch eager, batched.
3. ``ort_<variant>``, ``openvino_<precision>``: our exported encoder on its engine + the head in
   this process, batched, for each exported variant of `in_process.COMPARED_VARIANTS` (ONNX
   Runtime fp32 and int8-static, OpenVINO fp32, bf16 and int8) and the served one. The encoder
   runs in slices of as many records as the served encoder does (its ``rows_per_run``).
4. ``served_c<N>``: the `ubm` ensemble in a local tritonserver, through `ubm.UbmClient`, with N
   threads each sending one batch at a time on its own client.
5. ``served_c16_<variant>``: every other compared variant served by a tritonserver of its own
   (same tuning), at concurrency 16; not with ``--url``.
6. ``<served variant's row>_single`` and ``served_c1_single``: one record per call, for the
   latency target (served p99 at concurrency 1 under twice the in-process median plus 5 ms).

Every in-process row times what the server does for a record too (`in_process`). Latency is
per record for the seeds' way, per batch in process, and per request as the client sees it when
served (queueing included). Served rows also record, from Triton's metrics, each model's mean
queue and compute time per request (`served`). Every row but the seeds' way is measured in
alternating rounds (in process first, then served first) and the median round is reported, so
that a drift of the machine's speed does not favour one side.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import click
import torch

from ubm.records import Record
from ubm_build import export, options, paths
from ubm_build.bench import in_process, report, served
from ubm_build.bench.commands import batch_size_option, click_errors, count_option
from ubm_build.bench.in_process import InProcess, engine_row, engine_row_name
from ubm_build.bench.report import Log
from ubm_build.bench.rows import Row, describe, in_rounds, latency_target, ratio
from ubm_build.bench.served import ServedConfig, served_row
from ubm_build.bench.workload import batches_of, sample_records
from ubm_build.model.network import BehaviourModel, load_reader
from ubm_build.serving import server


@dataclass(frozen=True)
class BenchSettings:
    """What `run` measures: which records, in which batches, how often and how loaded."""

    records: int = 2048
    seeds_records: int = 256
    """Records scored the seeds' way (slow), the first of `records`."""
    single_records: int = 256
    """Records scored one per call for the latency rows, the first of `records`."""
    batch_size: int = 32
    """Records per batch in process and per request served."""
    max_length: int | None = None
    """Tokens per record in process; None: the model's (the server keeps its own)."""
    rows_per_run: int | None = None
    """Records per in-process encoder run, 0 for whole batches; None: the served encoder's."""
    concurrency: tuple[int, ...] = (1, 4, 16)
    """Client threads of each served row."""
    rounds: int = 3
    """Rounds of every row but the seeds' way, in process and served taking turns."""
    served_variants: bool = True
    """Also serve every other compared variant on a server of its own (concurrency 16)."""


DEFAULTS = BenchSettings()


def run(
    settings: BenchSettings,
    *,
    model_dir: Path,
    onnx_dir: Path,
    repository_dir: Path,
    url: str | None = None,
    metrics_url: str | None = None,
    csv: Path = paths.DEFAULT_CSV,
    workdir: Path = paths.RUN_DIR / "bench",
    log: Log = print,
) -> dict:
    """Run every row and return the results as a JSON-ready dict (see `report.write`).

    Args:
        settings: what to measure.
        model_dir, onnx_dir: the trained model and its exported graphs.
        repository_dir: the model repository served (by a tritonserver started here on free
            ports, unless `url` names a running one); read for what it serves in any case.
        url, metrics_url: a running server's gRPC and metrics endpoints.
        csv: the Taobao events the records come from.
        workdir: the started server's log.
        log: progress, one line per call.
    """
    model = BehaviourModel.load(model_dir)
    config = ServedConfig.read(repository_dir, onnx_dir)
    reader = load_reader(model_dir)
    if settings.max_length:
        reader = replace(reader, max_length=settings.max_length)
    setup = InProcess(
        reader=reader,
        rows_per_run=(
            config.rows_per_run if settings.rows_per_run is None else settings.rows_per_run
        ),
    )
    chosen = sample_records(settings.records, csv)
    batches = batches_of(chosen, settings.batch_size)
    singles = batches_of(chosen[: settings.single_records], 1)
    log(
        f"{len(chosen)} test-day records, {settings.batch_size} per batch,"
        f" max_length {setup.reader.max_length}, served encoder: {config.variant or 'unknown'},"
        f" {setup.rows_per_run or 'all'} records per run"
    )
    _log_mismatches(config, setup, repository_dir, onnx_dir, log)
    rows: list[Row] = []

    def add(row: Row) -> Row:
        rows.append(row)
        log(describe(row))
        return row

    seeds = add(in_process.seeds_way_row(chosen[: settings.seeds_records], setup))
    gc.collect()
    head = onnx_dir / "head.onnx"
    variants = [
        variant
        for variant in dict.fromkeys([*in_process.COMPARED_VARIANTS, config.variant])
        if variant and _exported(onnx_dir, variant, log)
    ]
    in_process_runs: list[Callable[[], Row]] = [
        partial(in_process.pytorch_row, model, batches, setup)
    ]
    for variant in variants:
        encoder = onnx_dir / export.Variant(variant).file_name
        in_process_runs.append(partial(engine_row, variant, encoder, head, batches, setup))
        if variant == config.variant:
            in_process_runs.append(partial(engine_row, variant, encoder, head, singles, setup))

    def served_runs(address: str, metrics: str | None) -> list[Callable[[], Row]]:
        served.warm_up(address, batches[:2])
        runs = [partial(served_row, address, batches, c, metrics) for c in settings.concurrency]
        runs.append(partial(served_row, address, singles, 1, metrics))
        return runs

    with contextlib.ExitStack() as servers:
        if url:
            runs = served_runs(url, metrics_url)
        else:
            log(f"starting tritonserver on {repository_dir} (log: {workdir / 'tritonserver.log'})")
            triton = servers.enter_context(
                server.TritonServer(repository_dir, workdir=workdir, ports=server.Ports.free())
            )
            runs = served_runs(triton.grpc_url, triton.metrics_url)
            for variant in variants if settings.served_variants else ():
                if variant == config.variant:
                    continue
                other = servers.enter_context(
                    server.TritonServer(
                        served.variant_repository(
                            workdir / "repositories" / variant, model_dir, onnx_dir, variant
                        ),
                        workdir=workdir / variant,
                        ports=server.Ports.free(),
                    )
                )
                served.warm_up(other.grpc_url, batches[:2])
                runs.append(
                    partial(served_row, other.grpc_url, batches, 16, other.metrics_url, variant)
                )
        compared = in_rounds([in_process_runs, runs], settings.rounds, log)
    for row in compared.values():
        add(row)
    return _result(
        settings, config, setup, chosen, seeds, rows, compared, url or str(repository_dir)
    )


def _exported(onnx_dir: Path, variant: str, log: Log) -> bool:
    """Whether `variant`'s encoder file is in `onnx_dir` (if not, says so)."""
    encoder = onnx_dir / export.Variant(variant).file_name
    if not encoder.is_file():
        log(f"{encoder} is missing: no rows for {variant}")
    return encoder.is_file()


def _log_mismatches(
    config: ServedConfig, setup: InProcess, repository_dir: Path, onnx_dir: Path, log: Log
) -> None:
    """Say where the in-process rows do not do what the server does."""
    if config.variant is None:
        log(f"warning: {repository_dir}'s encoder is none of {onnx_dir}/encoder-*.onnx")
    if config.max_length not in (None, setup.reader.max_length):
        log(
            f"warning: the server cuts records to {config.max_length} tokens,"
            f" the in-process rows to {setup.reader.max_length}"
        )
    if setup.rows_per_run != config.rows_per_run:
        log(
            f"note: the served encoder runs {config.rows_per_run or 'all'} records at a time,"
            f" the in-process rows {setup.rows_per_run or 'all'}"
        )


def _result(
    settings: BenchSettings,
    config: ServedConfig,
    setup: InProcess,
    chosen: Sequence[Record],
    seeds: Row,
    rows: Sequence[Row],
    compared: dict[str, Row],
    server_name: str,
) -> dict:
    """The results file's content."""
    variant = config.variant
    in_process_batched = compared.get(engine_row_name(variant)) if variant else None
    in_process_single = compared.get(engine_row_name(variant, single=True)) if variant else None
    served_c16 = compared.get("served_c16")
    batched = [r for r in compared.values() if not r.name.startswith("served")]
    best = max(
        (r for r in batched if not r.name.endswith("_single")),
        default=None,
        key=lambda r: r.records_per_s,
    )
    return {
        "created": report.created(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "usable_cores": report.usable_cores(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "records": len(chosen),
        "seeds_way_records": seeds.records,
        "batch_size": settings.batch_size,
        "max_length": setup.reader.max_length,
        "served_variant": variant,
        "served_max_length": config.max_length,
        "served_rows_per_run": config.rows_per_run,
        "in_process_rows_per_run": setup.rows_per_run,
        "server": server_name,
        "rows": [row.to_dict() for row in rows],
        "best_in_process": best.name if best else None,
        "ratios": {
            "served_c16_over_inprocess_ort": ratio(served_c16, in_process_batched),
            "served_c16_over_best_in_process": ratio(served_c16, best),
            "served_c16_over_seeds_way": ratio(served_c16, seeds),
        },
        "latency_target": latency_target(compared.get("served_c1_single"), in_process_single),
    }


def _concurrency(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("comma-separated thread counts, e.g. 1,4,16") from None
    if not levels or min(levels) < 1:
        raise click.BadParameter("each level must be 1 or more")
    return levels


@click.command(help=__doc__.split("\n\n")[0].replace("`", ""))
@count_option("--records", DEFAULTS.records)
@count_option("--seeds-records", DEFAULTS.seeds_records, "Records scored the seeds' way (slow).")
@count_option(
    "--single-records",
    DEFAULTS.single_records,
    "Records scored one per call for the latency rows.",
)
@batch_size_option(DEFAULTS.batch_size, "Records per batch in process and per request served.")
@click.option(
    "--max-length",
    type=click.IntRange(8),
    help="Tokens per record in process  [default: the model's]. The server keeps its own.",
)
@click.option(
    "--rows-per-run",
    type=click.IntRange(0),
    help="Records per in-process encoder run, 0 for whole batches"
    "  [default: the served encoder's].",
)
@click.option(
    "--concurrency",
    default=",".join(map(str, DEFAULTS.concurrency)),
    show_default=True,
    callback=_concurrency,
    help="Client threads for the served rows.",
)
@count_option(
    "--rounds",
    DEFAULTS.rounds,
    "Rounds of the served variant's rows, in process and served, taking turns;"
    " the median round is reported.",
)
@click.option(
    "--served-variants/--no-served-variants",
    default=DEFAULTS.served_variants,
    show_default=True,
    help="Also serve every other compared encoder variant on its own server (concurrency 16).",
)
@options.model_dir()
@options.onnx_dir()
@options.repository()
@click.option("--url", help="Use a running server at HOST:PORT instead of starting one.")
@click.option(
    "--metrics-url",
    help="With --url: the server's metrics endpoint, e.g. http://HOST:8002, for the time split.",
)
@options.csv()
@options.out_file(paths.RESULTS / "bench.json")
def main(
    model_dir: Path,
    onnx_dir: Path,
    repository_dir: Path,
    url: str | None,
    metrics_url: str | None,
    csv: Path,
    out: Path,
    **settings: object,
) -> None:
    """Measure every row and write the results."""
    torch.set_num_threads(os.cpu_count() or 1)
    console = report.wide_console(stderr=True)
    with click_errors():
        result = run(
            BenchSettings(**settings),  # the options named after its fields
            model_dir=model_dir,
            onnx_dir=onnx_dir,
            repository_dir=repository_dir,
            url=url,
            metrics_url=metrics_url,
            csv=csv,
            log=report.console_log(console),
        )
    report.print_bench(result)
    console.print(f"wrote {report.write(result, out)}")


if __name__ == "__main__":
    main()
