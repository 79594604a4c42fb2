"""The bench library's pure parts: rows and what is derived from them, the report's tables,
perf_analyzer's settings and output, and the commands' error translation."""

from __future__ import annotations

import io

import click
import pytest
from rich.console import Console

from ubm_build.bench import perf_analyzer, report
from ubm_build.bench.commands import click_errors
from ubm_build.bench.errors import BenchError, PerfAnalyzerError
from ubm_build.bench.rows import (
    Row,
    describe,
    latency_target,
    median_row,
    ratio,
    summarise,
    summarise_batches,
)


def row(name: str, records_per_s: float, p50_ms: float = 1.0, p99_ms: float = 2.0) -> Row:
    return Row(name, "", 1, "record", 10, 10 / records_per_s, records_per_s, p50_ms, p99_ms)


def test_summarise_takes_rate_and_percentiles_from_latencies():
    got = summarise("r", "d", 4, "batch", [0.001] * 99 + [0.101], records=400, seconds=2.0)
    assert (got.records_per_s, got.records_per_call, got.seconds) == (200.0, 4, 2.0)
    assert got.p50_ms == pytest.approx(1.0)
    assert 1.0 < got.p99_ms <= 101.0
    assert got.server is None and got.round_records_per_s is None


def test_summarise_batches_counts_every_record_and_the_first_batch_size():
    got = summarise_batches("r", "d", "request", [[1, 2, 3], [4, 5, 6], [7]], [0.1] * 3, 1.0)
    assert (got.records, got.records_per_call, got.records_per_s) == (7, 3, 7.0)


def test_median_row_is_the_middle_round_and_keeps_every_round():
    rounds = [row("a", 30.0), row("a", 10.0), row("a", 20.0)]
    got = median_row(rounds)
    assert got.records_per_s == 20.0
    assert got.round_records_per_s == [30.0, 10.0, 20.0]


def test_median_row_of_an_even_count_is_the_lower_middle():
    assert median_row([row("a", 40.0), row("a", 10.0)]).records_per_s == 10.0


def test_ratio_and_latency_target_need_both_rows():
    assert ratio(row("a", 30.0), row("b", 10.0)) == 3.0
    assert ratio(None, row("b", 10.0)) is None
    assert latency_target(None, row("b", 1.0)) is None
    target = latency_target(row("s", 1.0, p99_ms=8.0), row("i", 1.0, p50_ms=2.0))
    assert target == {
        "served_c1_single_p99_ms": 8.0,
        "inprocess_single_p50_ms": 2.0,
        "target_ms": 9.0,
        "met": True,
    }


def test_describe_names_the_row_and_what_its_latency_measures():
    assert describe(row("seeds_way", 12.34)) == (
        "seeds_way: 12.3 records/s, p50 1.0 ms, p99 2.0 ms per record"
    )


def test_print_bench_prints_rows_ratios_and_the_latency_target():
    served = row("served_c1", 50.0).to_dict() | {
        "server": {
            name: {"queue_ms": 0.5, "compute_ms": 1.5, "records_per_execution": 4.0}
            for name in ("preprocess", "encoder", "head")
        }
    }
    result = {
        "records": 10,
        "batch_size": 1,
        "max_length": 64,
        "machine": {"usable_cores": 2},
        "served_variant": "fp32",
        "rows": [row("seeds_way", 10.0).to_dict(), served],
        "ratios": {"served_c16_over_seeds_way": 5.0, "served_c16_over_inprocess_ort": None},
        "latency_target": latency_target(row("s", 1.0, p99_ms=20.0), row("i", 1.0)),
    }
    out = io.StringIO()
    report.print_bench(result, Console(file=out, width=120))
    text = out.getvalue()
    assert "served_c1" in text and "0.5 / 1.5" in text
    assert "served_c16_over_seeds_way: 5.00" in text
    assert "served_c16_over_inprocess_ort: -" in text
    assert "MISSED" in text


def test_perf_analyzer_settings_become_its_arguments():
    settings = perf_analyzer.PerfAnalyzerSettings(batch_size=4, concurrency=2, max_trials=3)
    arguments = settings.arguments()
    assert arguments[arguments.index("-b") + 1] == "4"
    assert arguments[arguments.index("--concurrency-range") + 1] == "2:2"
    assert arguments[arguments.index("--max-trials") + 1] == "3"
    assert settings.timeout_s() == pytest.approx(5.0 * 5 + 120)


def test_perf_analyzer_passes_and_report_are_parsed():
    stdout = "Pass [1] throughput: 10.5 infer/sec\nPass [2] throughput: 1.2e1 infer/sec\n"
    assert perf_analyzer.parse_passes(stdout) == [10.5, 12.0]
    assert perf_analyzer.parse_csv("Inferences/Second,p99 latency\n12.5,3000\n") == {
        "Inferences/Second": "12.5",
        "p99 latency": "3000",
    }
    with pytest.raises(PerfAnalyzerError):
        perf_analyzer.parse_csv("Inferences/Second\n")


def test_library_errors_become_click_errors_only_in_commands():
    assert not issubclass(BenchError, click.ClickException)
    assert issubclass(PerfAnalyzerError, BenchError)
    with pytest.raises(click.ClickException, match="no records"), click_errors():
        raise BenchError("no records")
    with pytest.raises(ValueError), click_errors():
        raise ValueError("not a bench error")
