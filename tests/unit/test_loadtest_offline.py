"""loadtest/: payloads, load-shape schedules, capacity decisions, and that Locust loads the files.

The modules under test import no Locust (it monkey-patches the process it is imported into);
what needs Locust runs in a subprocess.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ubm import contract
from ubm._base import Score

ROOT = Path(__file__).resolve().parents[2]
LOADTEST = ROOT / "loadtest"


@pytest.fixture(scope="module")
def loadtest_module():
    sys.path.insert(0, str(LOADTEST))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(LOADTEST))


@pytest.fixture(scope="module")
def stages(loadtest_module):
    return loadtest_module("stages")


@pytest.fixture(scope="module")
def payloads(loadtest_module):
    return loadtest_module("payloads")


@pytest.fixture(scope="module")
def capacity(loadtest_module):
    return loadtest_module("capacity")


def test_every_shape_is_bounded_and_ends(stages):
    assert set(stages.SHAPES) == {"step_ramp", "spike", "soak"}
    for name, schedule in stages.SHAPES.items():
        end = stages.schedule_end(schedule)
        assert 0 < end <= stages.MAX_SECONDS, name
        assert all(1 <= stage.users <= stages.MAX_USERS for stage in schedule), name
        assert stages.tick_at(schedule, end) is None, name
        assert stages.tick_at(schedule, end + 3600) is None, name
        assert (LOADTEST / f"shape_{name}.py").is_file()


def test_tick_follows_the_stages(stages):
    schedule = [stages.Stage(10, 1, 1), stages.Stage(5, 8, 4)]
    assert stages.tick_at(schedule, 0) == (1, 1)
    assert stages.tick_at(schedule, 9.99) == (1, 1)
    assert stages.tick_at(schedule, 10) == (8, 4)
    assert stages.tick_at(schedule, 14.9) == (8, 4)
    assert stages.tick_at(schedule, 15) is None


def test_step_ramp_rises_and_spike_returns(stages):
    users = [stage.users for stage in stages.STEP_RAMP]
    assert users == sorted(users) and len(set(users)) == len(users)
    spike = [stage.users for stage in stages.SPIKE]
    assert spike[0] == spike[-1] < max(spike)


def test_the_example_sessions_are_valid_records(payloads):
    records = payloads.read_records(payloads.DEFAULT_RECORDS_FILE)
    assert len(records) == 300
    assert len({record.id for record in records}) == 300


def test_a_bad_line_is_named(payloads, tmp_path):
    path = tmp_path / "records.jsonl"
    good = payloads.DEFAULT_RECORDS_FILE.read_text().splitlines()[0]
    path.write_text(f'{good}\n\n{{"id": "x", "events": []}}\n')
    with pytest.raises(ValueError, match=r"records.jsonl:3: events must not be empty"):
        payloads.read_records(path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        payloads.read_records(tmp_path / "empty.jsonl")


def test_the_pool_draws_distinct_records_per_request(payloads):
    records = payloads.read_records(payloads.DEFAULT_RECORDS_FILE)
    pool = payloads.RecordPool(records, batch_size=16, seed=1)
    batches = [pool.draw() for _ in range(20)]
    assert all(len(batch) == 16 for batch in batches)
    assert all(len({record.id for record in batch}) == 16 for batch in batches)
    assert len({record.id for batch in batches for record in batch}) > 100  # spread over the file

    small = payloads.RecordPool(records[:3], batch_size=8, seed=1)
    assert len(small.draw()) == 8
    for bad in (0, contract.MAX_BATCH_SIZE + 1):
        with pytest.raises(ValueError, match="batch size"):
            payloads.RecordPool(records, batch_size=bad)


def test_response_bytes_counts_the_output_tensors(payloads):
    assert payloads.response_bytes([Score("a", 0.1), Score("b", 0.2)]) == 8
    assert payloads.response_bytes([Score("a", 0.1, embedding=(0.0,) * 384)]) == 4 + 4 * 384
    assert payloads.response_bytes(()) == 0


def test_a_step_is_within_the_slo_only_without_failures(capacity):
    latencies = [10.0] * 98 + [50.0, 200.0]
    step = capacity.measure(4, latencies, 0, 2.0, batch_size=8, slo_ms=300)
    assert step.requests == 100 and step.failures == 0
    assert step.records_per_s == pytest.approx(100 * 8 / 2.0)
    assert step.p50_ms == pytest.approx(10.0)
    assert 50 < step.p99_ms <= 200
    assert step.within_slo and capacity.stop_reason(step, 300) is None

    over = capacity.measure(8, latencies, 0, 2.0, batch_size=8, slo_ms=40)
    assert not over.within_slo
    assert "> SLO 40 ms at 8 users" in capacity.stop_reason(over, 40)

    failed = capacity.measure(16, latencies, 3, 2.0, batch_size=8, slo_ms=300)
    assert failed.requests == 103 and not failed.within_slo
    assert failed.records_per_s == pytest.approx(100 * 8 / 2.0)  # failed requests score nothing
    assert "3 of 103 requests failed" in capacity.stop_reason(failed, 300)

    nothing = capacity.measure(32, [], 5, 2.0, batch_size=1, slo_ms=300)
    assert nothing.p99_ms is None and not nothing.within_slo


def test_capacity_is_the_best_step_within_the_slo(capacity, tmp_path):
    steps = [
        capacity.measure(1, [20.0] * 50, 0, 1.0, 1, 100),
        capacity.measure(2, [30.0] * 90, 0, 1.0, 1, 100),
        capacity.measure(4, [150.0] * 95, 0, 1.0, 1, 100),
    ]
    best = capacity.best_step(steps)
    assert best.users == 2 and best.records_per_s == pytest.approx(90)
    assert capacity.best_step(steps[2:]) is None
    path = capacity.plot(steps, 100, best, tmp_path / "capacity.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capacity.plot(steps[2:], 100, None, tmp_path / "none.png")


def test_run_passes_users_only_without_a_shape(loadtest_module):
    run = loadtest_module("run")
    args = run.parse_args(["--users", "3", "--run-time", "5s", "--", "--embedding"])
    command = run.locust_command(args, "127.0.0.1:1234")
    assert command[command.index("--host") + 1] == "127.0.0.1:1234"
    assert command[command.index("--users") + 1] == "3"
    assert command[command.index("--run-time") + 1] == "5s"
    assert command[-1] == "--embedding"

    shaped = run.locust_command(run.parse_args(["--shape", "spike"]), "127.0.0.1:1234")
    assert "--users" not in shaped and "--run-time" not in shaped
    assert shaped[shaped.index("-f") + 1].endswith(
        "locustfile.py," + str(LOADTEST / "shape_spike.py")
    )


LOAD_WITH_LOCUST = """
import json, sys
from locust.util.load_locustfile import load_locustfile
users = load_locustfile(sys.argv[1])[-2]  # the last two: user classes, shape instances
shapes = {}
for path in sys.argv[2:]:
    found = load_locustfile(path)[-1]
    shapes[path] = [(type(s).__name__, s.tick()) for s in found]
print(json.dumps({"users": sorted(users), "shapes": shapes}))
"""


def test_locust_loads_the_user_and_each_shape():
    shape_files = sorted(str(path) for path in LOADTEST.glob("shape_*.py"))
    done = subprocess.run(
        [sys.executable, "-c", LOAD_WITH_LOCUST, str(LOADTEST / "locustfile.py"), *shape_files],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert loaded["users"] == ["UbmUser"]
    assert len(shape_files) == 3
    for path in shape_files:
        [(name, first_tick)] = loaded["shapes"][path]
        assert name.endswith("Shape")
        assert first_tick[0] >= 1


def locust_list(*options: str) -> subprocess.CompletedProcess:
    """``locust -f locustfile.py OPTIONS --list``: parses every option, lists the users."""
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOADTEST / "locustfile.py"), *options, "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_locust_accepts_the_custom_options():
    records = str(ROOT / "examples" / "sessions.jsonl")
    done = locust_list(
        "--batch-size", "2", "--records-file", records, "--embedding", "--request-timeout", "5"
    )
    assert done.returncode == 0, done.stderr
    assert "UbmUser" in done.stdout
    assert locust_list("--no-such-option", "1").returncode == 2
