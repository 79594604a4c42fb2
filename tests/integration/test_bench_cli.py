"""`python -m ubm_build.bench.cli_vs_perf_analyzer` on the tiny repository: both clients run,
and the JSON's shape.

No timing is asserted: the tiny model on a shared machine says nothing about speed.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ubm_build.bench import cli_vs_perf_analyzer, comparison, perf_analyzer

pytestmark = pytest.mark.integration

TOP_LEVEL = {
    "cli_records_per_s",
    "perf_analyzer_records_per_s",
    "ratio",
    "target_ratio",
    "meets_target",
    "round_ratios",
    "ratio_excluding_cli_startup",
    "ratio_steady",
    "concurrency",
    "batch_size",
    "records",
    "records_file",
    "cli_lines",
    "served_variant",
    "cores",
    "perf_analyzer_settings",
    "rounds",
    "outputs",
    "created",
}
PERF_ANALYZER = {
    "records_per_s",
    "stable",
    "p50_latency_ms",
    "p99_latency_ms",
    "passes",
    "seconds",
    "cpu_s",
    "server_records_per_request",
    "command",
}
CLI = {
    "lines",
    "seconds",
    "startup_s",
    "records_per_s",
    "records_per_s_excluding_startup",
    "server_steady_records_per_s",
    "cpu_s",
    "command",
}


@pytest.fixture(scope="module")
def perf_analyzer_runs():
    problem = perf_analyzer.problem()
    if problem:
        pytest.skip(f"perf_analyzer cannot run here: {problem}")


def test_cli_against_perf_analyzer_json(perf_analyzer_runs, triton, tmp_path):
    out = tmp_path / "cli_vs_perf_analyzer.json"
    args = ["--url", triton.grpc_url, "--records", "8", "--batch-size", "4", "--concurrency", "2"]
    args += ["--rounds", "2", "--cli-lines", "16", "--measurement-interval", "1000"]
    args += ["--max-trials", "3", "--stability-percentage", "50", "-o", str(out)]
    result = CliRunner().invoke(cli_vs_perf_analyzer.main, args)
    assert result.exit_code == 0, result.output

    got = json.loads(out.read_text())
    assert set(got) == TOP_LEVEL
    assert (got["batch_size"], got["concurrency"], got["records"]) == (4, 2, 8)
    assert (got["records_file"], got["cli_lines"]) == ("examples/sessions.jsonl", 16)
    assert got["served_variant"] is None  # unknown for a server given by --url
    cli, pa = got["cli_records_per_s"], got["perf_analyzer_records_per_s"]
    assert cli > 0 and pa > 0
    # The ratio is rounded to 4 decimals from the unrounded rates, which are kept to 2.
    assert got["ratio"] == pytest.approx(cli / pa, abs=5e-5 + cli / pa * (0.005 / cli + 0.005 / pa))
    assert got["meets_target"] == (got["ratio"] >= comparison.TARGET_RATIO)
    assert got["perf_analyzer_settings"]["measurement_interval_ms"] == 1000

    assert [r["order"] for r in got["rounds"]] == [
        ["perf_analyzer", "cli"],
        ["cli", "perf_analyzer"],
    ]
    assert len(got["round_ratios"]) == 2
    for r in got["rounds"]:
        assert set(r["perf_analyzer"]) == PERF_ANALYZER
        assert set(r["cli"]) == CLI
        assert r["cli"]["lines"] == 16
        assert r["perf_analyzer"]["passes"] >= 1
        # Every perf_analyzer request carried one batch of 4 records (the server's own count).
        assert r["perf_analyzer"]["server_records_per_request"] == pytest.approx(4.0)
    assert "median" in result.output  # the table


def test_input_data_is_one_batch1_step_per_record(tmp_path):
    lines = [b'{"id":"a","events":[]}', b'{"id":"b","events":[]}']
    data = json.loads(perf_analyzer.write_input_data(lines, tmp_path / "in.json").read_text())
    assert data == {
        "data": [{"records": {"content": [line.decode()], "shape": [1]}} for line in lines]
    }
    assert comparison.cli_lines_for(10.0, 30.0, 64, 300) == 320
    assert comparison.cli_lines_for(1.0, 1.0, 64, 300) == 300
