"""What the bench commands print and write: rich tables, log lines, the results JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from ubm import contract

Log = Callable[[str], None]


def wide_console(stderr: bool = False) -> Console:
    """A console for tables: a terminal's own width, 120 columns when written to a file."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=120)


def console_log(console: Console) -> Log:
    """A `Log` that prints each message as it is, on one line where it fits."""
    return lambda message: console.print(message, highlight=False, soft_wrap=True)


def results_table(title: str) -> Table:
    """A compact table with a header rule, as the benchmarks print them."""
    return Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)


def created() -> str:
    """Now, in UTC to the second: a results file's ``created``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def write(result: dict, path: Path) -> Path:
    """`result` as indented JSON at `path`, its directory made if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def print_bench(result: dict, console: Console | None = None) -> None:
    """`make bench`'s tables: every row against the seeds' way, the served rows' time split,
    the ratios and the latency target."""
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
    _print_server_split(rows, console)
    for key, value in result["ratios"].items():
        console.print(f"{key}: {'-' if value is None else f'{value:.2f}'}")
    latency = result.get("latency_target")
    if latency:
        console.print(
            f"served_c1_single p99 {latency['served_c1_single_p99_ms']:.1f} ms against"
            f" 2 x in-process {latency['inprocess_single_p50_ms']:.1f} ms + 5 ="
            f" {latency['target_ms']:.1f} ms: {'met' if latency['met'] else 'MISSED'}"
        )


def _print_server_split(rows: list[dict], console: Console) -> None:
    """The served rows' queue and compute time per model, from Triton's metrics."""
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
