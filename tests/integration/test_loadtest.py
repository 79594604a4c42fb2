"""loadtest/ against the real tritonserver: short Locust runs, each in its own process."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOADTEST = ROOT / "loadtest"

IN_FLIGHT = """
import sys

import locust  # noqa: F401  (gevent's monkey-patching, as under the locust command)
import gevent

sys.path.insert(0, sys.argv[2])
import locustfile  # calls grpc's init_gevent
from defaults import DEFAULT_RECORDS_FILE
from payloads import read_records

from ubm import UbmClient

records = read_records(DEFAULT_RECORDS_FILE)[:4]
state = {"in_flight": 0, "most": 0}


def user():
    with UbmClient(sys.argv[1]) as client:
        for _ in range(5):
            state["in_flight"] += 1
            state["most"] = max(state["most"], state["in_flight"])
            client.score_batch(records)
            state["in_flight"] -= 1


gevent.joinall([gevent.spawn(user) for _ in range(4)], raise_error=True)
print(state["most"])
"""


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_grpc_calls_yield_to_other_users(triton):
    """While one user waits for the server, the others send: grpc cooperates with gevent.

    Without `init_gevent` a call blocks every greenlet and at most one request is in flight.
    """
    done = run("-c", IN_FLIGHT, triton.grpc_url, str(LOADTEST))
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 1


def test_headless_run_reports_every_request(triton, tmp_path):
    out = tmp_path / "loadtest"
    done = run(
        str(LOADTEST / "run.py"),
        *("--url", triton.grpc_url, "--users", "3", "--run-time", "4s", "--batch-size", "4"),
        *("--out", str(out)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with open(out / "ubm_stats.csv") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    request = rows["score_batch[4]"]
    assert request["Type"] == "grpc"
    assert int(request["Request Count"]) > 0
    assert int(request["Failure Count"]) == 0
    assert float(request["Average Content Size"]) == 4 * 4  # 4 probabilities, FP32
    assert (out / "ubm_stats_history.csv").is_file()
    assert "score_batch[4]" in (out / "report.html").read_text()


def test_a_run_over_its_p99_threshold_exits_1(triton, tmp_path):
    done = run(
        str(LOADTEST / "run.py"),
        *("--url", triton.grpc_url, "--users", "1", "--run-time", "2s"),
        *("--max-p99-ms", "0.001", "--out", str(tmp_path)),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "over --max-p99-ms 0.001" in done.stderr


def test_capacity_ramp_writes_json_and_plot(triton, tmp_path):
    done = run(
        str(LOADTEST / "capacity.py"),
        *("--url", triton.grpc_url, "--steps", "1,2", "--step-seconds", "1.5"),
        *("--warmup-seconds", "0.5", "--slo-ms", "60000", "--out-dir", str(tmp_path)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "capacity.json").read_text())
    assert result["slo"] == {"percentile": 99, "ms": 60000.0}
    assert [step["users"] for step in result["steps"]] == [1, 2]
    assert all(step["failures"] == 0 and step["within_slo"] for step in result["steps"])
    assert result["capacity"]["records_per_s"] == max(s["records_per_s"] for s in result["steps"])
    assert result["stopped_because"].startswith("reached the last step")
    assert (tmp_path / "capacity.png").read_bytes()[:4] == b"\x89PNG"
    assert "capacity:" in done.stdout
    check = result["perf_analyzer"]  # at the capacity step's concurrency, where it can run
    assert "failed" not in check, check
    if "skipped" not in check:
        assert check["concurrency"] == result["capacity"]["users"]
        assert check["records_per_s"] > 0
        assert check["over_locust"] == pytest.approx(
            check["records_per_s"] / result["capacity"]["records_per_s"]
        )
        assert check["locust_again"]["users"] == check["concurrency"]
        assert check["over_locust_again"] == pytest.approx(
            check["records_per_s"] / check["locust_again"]["records_per_s"]
        )


def test_capacity_stops_at_the_first_step_over_the_slo(triton, tmp_path):
    done = run(
        str(LOADTEST / "capacity.py"),
        *("--url", triton.grpc_url, "--steps", "1,2,4", "--step-seconds", "1"),
        *("--warmup-seconds", "0.2", "--slo-ms", "0.001", "--out-dir", str(tmp_path)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "capacity.json").read_text())
    assert len(result["steps"]) == 1
    assert result["capacity"] is None
    assert "> SLO" in result["stopped_because"]
