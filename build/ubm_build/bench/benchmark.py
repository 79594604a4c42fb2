"""`python -m ubm_build.bench` (`make bench`): the same records scored from the seeds' way to
the served ensemble, in one run on this machine.

Rows, all on the same test-day sessions:

1. ``seeds_way``: bert-base-cased's architecture (12 layers, hidden 768, vocabulary 28,996,
   random weights), PyTorch eager, one record per call, the [CLS] vector into a linear layer,
   on the first ``--seeds-records`` records (it is slow; its rate does not depend on how many).
2. ``pytorch``: our trained model (`BehaviourModel.load`), PyTorch eager, batched.
3. ``ort_<variant>``: our exported encoder + head in ONNX Runtime in this process, batched, for
   the fp32 and int8-static encoders (and the served variant, if it is another one). The
   encoder runs in slices of as many records as the served encoder does (its ``rows_per_run``).
4. ``served_c<N>``: the `ubm` ensemble in a local tritonserver, through `ubm.UbmClient`, with N
   threads each sending one batch at a time on its own client.
5. ``ort_<variant>_single`` and ``served_c1_single``: one record per call, for the latency
   target (served p99 at concurrency 1 under twice the in-process median plus 5 ms).

Every in-process row times what the server does for a record too: behaviour text, session
features, tokenization and the model (JSON decoding aside). Batched rows use the same batches
in the same order as the requests sent to the server (no sorting by length). Latency is per
record for the seeds' way, per batch in process, and per request as the client sees it when
served (queueing included). A warm-up batch before each row is not timed. Served rows also
record, from Triton's metrics, each model's mean queue and compute time per request.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import click
import numpy as np
import torch
from google.protobuf import text_format
from rich import box
from rich.console import Console
from rich.table import Table
from torch import nn
from transformers import BertConfig, BertModel
from tritonclient.grpc import model_config_pb2

from ubm import UbmClient, contract
from ubm.records import Record, parse_record
from ubm_build import data, export, options, paths
from ubm_build.inputs.behaviour_text import encode_events
from ubm_build.inputs.features import feature_matrix
from ubm_build.model.network import BehaviourModel, load_tokenizer
from ubm_build.serving import repository as repository_module
from ubm_build.serving import server, triton_metrics
from ubm_build.serving.triton_models.onnx_model import run_in_slices

DEFAULT_RECORDS = 2048
DEFAULT_SEEDS_RECORDS = 256
DEFAULT_SINGLE_RECORDS = 256
DEFAULT_BATCH_SIZE = 32
DEFAULT_CONCURRENCY = (1, 4, 16)
DEFAULT_ROUNDS = 3
SEEDS_VOCAB_SIZE = 28996
"""bert-base-cased's vocabulary. Our tokenizer's ids are folded into it (id mod 28,996): the
weights are random, so only the amount of work matters, and that is the same."""
IN_PROCESS_VARIANTS = ("fp32", "int8-static")
REQUEST_TIMEOUT_S = 600.0

Log = Callable[[str], None]


@dataclass(frozen=True)
class Row:
    name: str
    description: str
    records_per_call: int
    """Records per model call (seeds' way, in process) or per request (served)."""
    latency_of: str
    """What p50/p99 measure: one "record", one "batch" in process, one "request" served."""
    records: int
    seconds: float
    records_per_s: float
    p50_ms: float
    p99_ms: float
    server: dict[str, dict] | None = None
    """Served rows: per model, `triton_metrics.ModelSplit` as a dict."""
    round_records_per_s: list[float] | None = None
    """Rows measured in rounds: records/s of each round (the row is the median round's)."""

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(
    name: str,
    description: str,
    records_per_call: int,
    latency_of: str,
    latencies_s: Sequence[float],
    records: int,
    seconds: float,
) -> Row:
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    return Row(
        name=name,
        description=description,
        records_per_call=records_per_call,
        latency_of=latency_of,
        records=records,
        seconds=round(seconds, 3),
        records_per_s=records / seconds,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
    )


def sample_records(n: int, csv: Path = data.DEFAULT_CSV, seed: int = 0) -> list[Record]:
    """`n` test-day sessions in a fixed random order, as the SDK's validated records.

    The test window is repeated when `n` is larger than it.
    """
    examples = [ex for ex in data.make_examples(data.read_events(csv)) if ex.window == "test"]
    if not examples:
        raise click.ClickException(f"{csv} has no test-window sessions")
    random.Random(seed).shuffle(examples)
    return [parse_record(examples[i % len(examples)].to_record()) for i in range(n)]


def batches_of(records: Sequence[Record], batch_size: int) -> list[list[Record]]:
    return [list(records[i : i + batch_size]) for i in range(0, len(records), batch_size)]


def model_inputs(
    tokenizer, batch: Sequence[Record], max_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, attention mask and session features: what `preprocess` sends on."""
    events = [record.events for record in batch]
    ids, mask = encode_events(tokenizer, events, max_length)
    return ids, mask, feature_matrix(events)


class SeedsWayModel(nn.Module):
    """bert-base-cased's architecture with random weights; [CLS] vector -> linear -> sigmoid."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=SEEDS_VOCAB_SIZE)  # the rest are bert-base's defaults
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.sigmoid(self.classifier(hidden[:, 0]))


@torch.inference_mode()
def bench_seeds_way(records: Sequence[Record], tokenizer, max_length: int) -> Row:
    model = SeedsWayModel().eval()

    def score(record: Record) -> None:
        ids, mask = encode_events(tokenizer, [record.events], max_length)
        model(torch.from_numpy(ids % SEEDS_VOCAB_SIZE), torch.from_numpy(mask))

    latencies, seconds = _time_batches([[r] for r in records], lambda one: score(one[0]))
    description = "bert-base-cased arch, random weights, eager, 1 record/call, [CLS] + linear"
    return summarise("seeds_way", description, 1, "record", latencies, len(records), seconds)


def _time_batches(
    batches: Sequence[Sequence[Record]], score: Callable[[Sequence[Record]], object]
) -> tuple[list[float], float]:
    score(batches[0])  # warm-up
    latencies = []
    started = time.perf_counter()
    for batch in batches:
        t = time.perf_counter()
        score(batch)
        latencies.append(time.perf_counter() - t)
    return latencies, time.perf_counter() - started


@torch.inference_mode()
def bench_pytorch(model: BehaviourModel, tokenizer, batches, max_length: int) -> Row:
    model.eval()

    def score(batch: Sequence[Record]) -> np.ndarray:
        ids, mask, features = model_inputs(tokenizer, batch, max_length)
        embedding = model.encoder(torch.from_numpy(ids), torch.from_numpy(mask))
        return model.head(embedding, torch.from_numpy(features)).numpy()

    latencies, seconds = _time_batches(batches, score)
    n = sum(len(batch) for batch in batches)
    description = "our MiniLM model (BehaviourModel.load), PyTorch eager, batched"
    return summarise("pytorch", description, len(batches[0]), "batch", latencies, n, seconds)


def ort_row_name(variant: str, *, single: bool = False) -> str:
    return f"ort_{variant.replace('-', '_')}" + ("_single" if single else "")


def bench_ort(
    variant: str,
    encoder: Path,
    head: Path,
    tokenizer,
    batches: Sequence[Sequence[Record]],
    max_length: int,
    rows_per_run: int,
) -> Row:
    """In-process ONNX Runtime, the encoder in slices of `rows_per_run` records like the server."""
    encoder_session, head_session = export.ort_session(encoder), export.ort_session(head)

    def score(batch: Sequence[Record]) -> np.ndarray:
        ids, mask, features = model_inputs(tokenizer, batch, max_length)
        feeds = {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}
        embedding = run_in_slices(encoder_session, [contract.EMBEDDING], feeds, rows_per_run)[0]
        head_feeds = {contract.EMBEDDING: embedding, contract.FEATURES: features}
        return head_session.run([contract.PURCHASE_PROBABILITY], head_feeds)[0]

    latencies, seconds = _time_batches(batches, score)
    n = sum(len(batch) for batch in batches)
    size = len(batches[0])
    slices = f", {rows_per_run} records per run" if 0 < rows_per_run < size else ""
    name = ort_row_name(variant, single=size == 1)
    description = f"ONNX Runtime in this process, {variant} encoder + head{slices}"
    return summarise(name, description, size, "batch", latencies, n, seconds)


def bench_served(
    url: str,
    batches: Sequence[Sequence[Record]],
    concurrency: int,
    metrics_url: str | None = None,
) -> Row:
    """`concurrency` threads, each with its own client, take batches from one queue.

    With `metrics_url`, the row carries Triton's per-model split of the run (`triton_metrics`).
    """
    work: queue.SimpleQueue = queue.SimpleQueue()
    for batch in batches:
        work.put(batch)
    latencies: list[float] = []
    errors: list[BaseException] = []
    start = threading.Barrier(concurrency + 1)
    lock = threading.Lock()

    def worker() -> None:
        with UbmClient(url, timeout_s=REQUEST_TIMEOUT_S) as client:
            client.is_ready()  # connects the channel before the clock starts
            start.wait()
            while True:
                try:
                    batch = work.get_nowait()
                except queue.Empty:
                    return
                t = time.perf_counter()
                try:
                    client.score_batch(batch)
                except BaseException as e:
                    errors.append(e)
                    return
                with lock:
                    latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    before = triton_metrics.scrape(metrics_url) if metrics_url else None
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise click.ClickException(
            f"served request failed at concurrency {concurrency}: {errors[0]}"
        )
    split = None
    if before is not None:
        after = triton_metrics.scrape(metrics_url)
        split = {m: s.to_dict() for m, s in triton_metrics.split(before, after).items()}
    n = sum(len(batch) for batch in batches)
    size = len(batches[0])
    name = f"served_c{concurrency}" + ("_single" if size == 1 else "")
    description = f"tritonserver ensemble via UbmClient, {concurrency} thread(s) with own client"
    row = summarise(name, description, size, "request", latencies, n, seconds)
    return replace(row, server=split)


def served_parameter(repository: Path, model: str, key: str) -> int | None:
    """An integer parameter of `model`'s config in `repository` (None if it has none)."""
    config = repository / model / "config.pbtxt"
    if not config.is_file():
        return None
    parsed = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
    if key not in parsed.parameters:
        return None
    return int(parsed.parameters[key].string_value)


def describe(row: Row) -> str:
    return (
        f"{row.name}: {row.records_per_s:.1f} records/s, p50 {row.p50_ms:.1f} ms,"
        f" p99 {row.p99_ms:.1f} ms per {row.latency_of}"
    )


def median_row(rows: Sequence[Row]) -> Row:
    """The row of the median round by records/s (the lower middle one for an even count),
    carrying every round's records/s."""
    ordered = sorted(rows, key=lambda row: row.records_per_s)
    middle = ordered[(len(ordered) - 1) // 2]
    return replace(middle, round_records_per_s=[row.records_per_s for row in rows])


def ratio(numerator: Row | None, denominator: Row | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    return numerator.records_per_s / denominator.records_per_s


def latency_target(served: Row | None, in_process: Row | None) -> dict | None:
    """Served p99 at concurrency 1 against twice the in-process median plus 5 ms (one record)."""
    if served is None or in_process is None:
        return None
    target = 2 * in_process.p50_ms + 5
    return {
        "served_c1_single_p99_ms": served.p99_ms,
        "inprocess_single_p50_ms": in_process.p50_ms,
        "target_ms": target,
        "met": served.p99_ms < target,
    }


def run(
    *,
    model_dir: Path,
    onnx_dir: Path,
    repository: Path,
    records: int = DEFAULT_RECORDS,
    seeds_records: int = DEFAULT_SEEDS_RECORDS,
    single_records: int = DEFAULT_SINGLE_RECORDS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int | None = None,
    rows_per_run: int | None = None,
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    rounds: int = DEFAULT_ROUNDS,
    url: str | None = None,
    metrics_url: str | None = None,
    csv: Path = data.DEFAULT_CSV,
    workdir: Path = paths.RUN_DIR / "bench",
    log: Log = print,
) -> dict:
    """Run every row and return the results as a JSON-ready dict (see `write`)."""
    model = BehaviourModel.load(model_dir)
    tokenizer = load_tokenizer(model_dir)
    max_length = max_length or model.spec.max_length
    variant = repository_module.served_variant(repository, onnx_dir)
    served_length = served_parameter(repository, contract.PREPROCESS, "max_length")
    served_rows_per_run = served_parameter(repository, contract.ENCODER, "rows_per_run") or 0
    rows_per_run = served_rows_per_run if rows_per_run is None else rows_per_run
    chosen = sample_records(records, csv)
    batches = batches_of(chosen, batch_size)
    singles = batches_of(chosen[:single_records], 1)
    log(
        f"{len(chosen)} test-day records, {batch_size} per batch, max_length {max_length},"
        f" served encoder: {variant or 'unknown'}, {rows_per_run or 'all'} records per run"
    )
    if variant is None:
        log(f"warning: {repository}'s encoder is none of {onnx_dir}/encoder-*.onnx")
    if served_length not in (None, max_length):
        log(
            f"warning: the server cuts records to {served_length} tokens,"
            f" the in-process rows to {max_length}"
        )
    if rows_per_run != served_rows_per_run:
        log(
            f"note: the served encoder runs {served_rows_per_run or 'all'} records at a time,"
            f" the in-process rows {rows_per_run or 'all'}"
        )
    rows: list[Row] = []

    def add(row: Row) -> Row:
        rows.append(row)
        log(describe(row))
        return row

    seeds = add(bench_seeds_way(chosen[:seeds_records], tokenizer, max_length))
    gc.collect()
    add(bench_pytorch(model, tokenizer, batches, max_length))
    del model
    gc.collect()
    head = onnx_dir / "head.onnx"
    encoders = {}
    for name in dict.fromkeys([*IN_PROCESS_VARIANTS, *([variant] if variant else [])]):
        encoders[name] = onnx_dir / f"encoder-{name}.onnx"
        if not encoders[name].is_file():
            log(f"{encoders[name]} is missing: no ONNX Runtime row for {name}")
        elif name != variant:
            add(bench_ort(name, encoders[name], head, tokenizer, batches, max_length, rows_per_run))
            gc.collect()

    def compared_rows(address: str, metrics: str | None) -> dict[str, Row]:
        """The served variant in process and served, in `rounds` alternating rounds."""
        with UbmClient(address, timeout_s=REQUEST_TIMEOUT_S) as client:  # warm-up
            for batch in batches[:2]:
                client.score_batch(batch)
        in_process_runs = []
        if variant and encoders[variant].is_file():
            encoder = encoders[variant]
            in_process_runs = [
                partial(
                    bench_ort, variant, encoder, head, tokenizer, work, max_length, rows_per_run
                )
                for work in (batches, singles)
            ]
        served_runs = [partial(bench_served, address, batches, c, metrics) for c in concurrency]
        served_runs.append(partial(bench_served, address, singles, 1, metrics))
        measured: dict[str, list[Row]] = {}
        for round_ in range(rounds):
            order = (
                in_process_runs + served_runs if round_ % 2 == 0 else served_runs + in_process_runs
            )
            for measure in order:
                row = measure()
                measured.setdefault(row.name, []).append(row)
                log(f"round {round_ + 1}: {describe(row)}")
                gc.collect()
        return {name: median_row(rows) for name, rows in measured.items()}

    if url:
        compared = compared_rows(url, metrics_url)
    else:
        ports = server.Ports.free()
        log(f"starting tritonserver on {repository} (log: {workdir / 'tritonserver.log'})")
        with server.TritonServer(repository, workdir=workdir, ports=ports) as triton:
            compared = compared_rows(triton.grpc_url, triton.metrics_url)
    for row in compared.values():
        add(row)
    in_process = compared.get(ort_row_name(variant)) if variant else None
    in_process_single = compared.get(ort_row_name(variant, single=True)) if variant else None
    served_c16 = compared.get("served_c16")
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "records": len(chosen),
        "seeds_way_records": seeds.records,
        "batch_size": batch_size,
        "max_length": max_length,
        "served_variant": variant,
        "served_max_length": served_length,
        "served_rows_per_run": served_rows_per_run,
        "in_process_rows_per_run": rows_per_run,
        "server": url or str(repository),
        "rows": [row.to_dict() for row in rows],
        "ratios": {
            "served_c16_over_inprocess_ort": ratio(served_c16, in_process),
            "served_c16_over_seeds_way": ratio(served_c16, seeds),
        },
        "latency_target": latency_target(compared.get("served_c1_single"), in_process_single),
    }


def wide_console(stderr: bool = False) -> Console:
    """A console for tables: a terminal's own width, 120 columns when written to a file."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=120)


def results_table(title: str) -> Table:
    """A compact table with a header rule, as the benchmarks print them."""
    return Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)


def print_table(result: dict, console: Console | None = None) -> None:
    console = console or wide_console()
    rows = result["rows"]
    seeds = next((row for row in rows if row["name"] == "seeds_way"), None)
    table = results_table(
        f"{result['records']} records, {result['batch_size']} per batch,"
        f" max_length {result['max_length']}, {result['machine']['usable_cores']} cores,"
        f" served encoder {result['served_variant']}"
    )
    table.add_column("row", no_wrap=True)
    for column in ("records", "batch", "records/s", "p50 ms", "p99 ms", "per", "×seeds"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            row["name"],
            str(row["records"]),
            str(row["records_per_call"]),
            f"{row['records_per_s']:.1f}",
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            row["latency_of"],
            f"{row['records_per_s'] / seeds['records_per_s']:.1f}" if seeds else "-",
        )
    console.print(table)
    for row in rows:
        console.print(f"  {row['name']}: {row['description']}", highlight=False, soft_wrap=True)
    split = results_table(
        "served rows: Triton's mean ms per request, queued / computing, per model"
    )
    split.add_column("row", no_wrap=True)
    models = (contract.PREPROCESS, contract.ENCODER, contract.HEAD)
    for model in models:
        split.add_column(model, justify="right", no_wrap=True)
    split.add_column("encoder records/run", justify="right", no_wrap=True)
    for row in rows:
        server = row.get("server")
        if server:
            cells = [
                f"{server[m]['queue_ms']:.1f} / {server[m]['compute_ms']:.1f}"
                if m in server
                else "-"
                for m in models
            ]
            encoder = server.get(contract.ENCODER)
            per_run = f"{encoder['records_per_execution']:.1f}" if encoder else "-"
            split.add_row(row["name"], *cells, per_run)
    if split.row_count:
        console.print(split)
    for key, value in result["ratios"].items():
        console.print(f"{key}: {'-' if value is None else f'{value:.2f}'}")
    latency = result.get("latency_target")
    if latency:
        console.print(
            f"served_c1_single p99 {latency['served_c1_single_p99_ms']:.1f} ms against"
            f" 2 x in-process {latency['inprocess_single_p50_ms']:.1f} ms + 5 ="
            f" {latency['target_ms']:.1f} ms: {'met' if latency['met'] else 'MISSED'}"
        )


def write(result: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def _concurrency(ctx, param, value: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("comma-separated thread counts, e.g. 1,4,16") from None
    if not levels or min(levels) < 1:
        raise click.BadParameter("each level must be 1 or more")
    return levels


@click.command(help=__doc__.split("\n\n")[0].replace("`", ""))
@click.option("--records", type=click.IntRange(1), default=DEFAULT_RECORDS, show_default=True)
@click.option(
    "--seeds-records",
    type=click.IntRange(1),
    default=DEFAULT_SEEDS_RECORDS,
    show_default=True,
    help="Records scored the seeds' way (slow).",
)
@click.option(
    "--single-records",
    type=click.IntRange(1),
    default=DEFAULT_SINGLE_RECORDS,
    show_default=True,
    help="Records scored one per call for the latency rows.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, contract.MAX_BATCH_SIZE),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Records per batch in process and per request served.",
)
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
    default=",".join(map(str, DEFAULT_CONCURRENCY)),
    show_default=True,
    callback=_concurrency,
    help="Client threads for the served rows.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=DEFAULT_ROUNDS,
    show_default=True,
    help="Rounds of the served variant's rows, in process and served, taking turns;"
    " the median round is reported.",
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
    records,
    seeds_records,
    single_records,
    batch_size,
    max_length,
    rows_per_run,
    concurrency,
    rounds,
    model_dir,
    onnx_dir,
    repository_dir,
    url,
    metrics_url,
    csv,
    out,
):
    torch.set_num_threads(os.cpu_count() or 1)
    console = wide_console(stderr=True)
    result = run(
        model_dir=model_dir,
        onnx_dir=onnx_dir,
        repository=repository_dir,
        records=records,
        seeds_records=seeds_records,
        single_records=single_records,
        batch_size=batch_size,
        max_length=max_length,
        rows_per_run=rows_per_run,
        concurrency=concurrency,
        rounds=rounds,
        url=url,
        metrics_url=metrics_url,
        csv=csv,
        log=lambda message: console.print(message, highlight=False, soft_wrap=True),
    )
    print_table(result)
    console.print(f"wrote {write(result, out)}")


if __name__ == "__main__":
    main()
