"""loadtest/: payloads, load-shape schedules, capacity decisions, pass/fail thresholds, and that
Locust loads the files.

The modules under test import no Locust (it monkey-patches the process it is imported into);
what needs Locust runs in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ubm import contract
from ubm.scores import Score

ROOT = Path(__file__).resolve().parents[2]
LOADTEST = ROOT / "loadtest"


@pytest.fixture(scope="module")
def stages(loadtest_module):
    return loadtest_module("stages")


@pytest.fixture(scope="module")
def payloads(loadtest_module):
    return loadtest_module("payloads")


@pytest.fixture(scope="module")
def defaults(loadtest_module):
    return loadtest_module("defaults")


@pytest.fixture(scope="module")
def steps(loadtest_module):
    return loadtest_module("capacity_steps")


@pytest.fixture(scope="module")
def thresholds(loadtest_module):
    return loadtest_module("thresholds")


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


def test_the_example_sessions_are_valid_records(payloads, defaults):
    records = payloads.read_records(defaults.DEFAULT_RECORDS_FILE)
    assert len(records) == 300
    assert len({record.id for record in records}) == 300


def test_a_bad_line_is_named(payloads, defaults, tmp_path):
    path = tmp_path / "records.jsonl"
    good = defaults.DEFAULT_RECORDS_FILE.read_text().splitlines()[0]
    path.write_text(f'{good}\n\n{{"id": "x", "events": []}}\n')
    with pytest.raises(ValueError, match=r"records.jsonl:3: events must not be empty"):
        payloads.read_records(path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        payloads.read_records(tmp_path / "empty.jsonl")


def test_the_pool_draws_distinct_records_per_request(payloads, defaults):
    records = payloads.read_records(defaults.DEFAULT_RECORDS_FILE)
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


def test_a_step_is_within_the_slo_only_without_failures(steps):
    latencies = [10.0] * 98 + [50.0, 200.0]
    step = steps.measure(4, latencies, 0, 2.0, batch_size=8, slo_ms=300)
    assert step.requests == 100 and step.failures == 0
    assert step.records_per_s == pytest.approx(100 * 8 / 2.0)
    assert step.p50_ms == pytest.approx(10.0)
    assert 50 < step.p99_ms <= 200
    assert step.within_slo and steps.stop_reason(step, 300) is None

    over = steps.measure(8, latencies, 0, 2.0, batch_size=8, slo_ms=40)
    assert not over.within_slo
    assert "> SLO 40 ms at 8 users" in steps.stop_reason(over, 40)
    assert "(over the SLO)" in steps.describe(over)

    failed = steps.measure(16, latencies, 3, 2.0, batch_size=8, slo_ms=300)
    assert failed.requests == 103 and not failed.within_slo
    assert failed.records_per_s == pytest.approx(100 * 8 / 2.0)  # failed requests score nothing
    assert "3 of 103 requests failed" in steps.stop_reason(failed, 300)

    nothing = steps.measure(32, [], 5, 2.0, batch_size=1, slo_ms=300)
    assert nothing.p99_ms is None and not nothing.within_slo
    assert "p50 - ms, p99 - ms" in steps.describe(nothing)


def test_capacity_is_the_best_step_within_the_slo(steps, loadtest_module, tmp_path):
    ramp = [
        steps.measure(1, [20.0] * 50, 0, 1.0, 1, 100),
        steps.measure(2, [30.0] * 90, 0, 1.0, 1, 100),
        steps.measure(4, [150.0] * 95, 0, 1.0, 1, 100),
    ]
    best = steps.best_step(ramp)
    assert best.users == 2 and best.records_per_s == pytest.approx(90)
    assert steps.best_step(ramp[2:]) is None
    assert "90.0 records/s sustained under p99 <= 100 ms, at 2 users" in (
        steps.describe_capacity(best, ramp[0], 100, 1)
    )
    assert "even 4 user(s) missed" in steps.describe_capacity(None, ramp[2], 100, 1)

    plot = loadtest_module("capacity_plot").plot
    path = plot(ramp, 100, best, tmp_path / "capacity.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot(ramp[2:], 100, None, tmp_path / "none.png")


def test_the_capacity_command_line_builds_its_settings(loadtest_module, tmp_path):
    capacity = loadtest_module("capacity")
    settings_module = loadtest_module("capacity_settings")
    assert capacity.parse_args([]) == settings_module.CapacitySettings()

    settings = capacity.parse_args(
        ["--steps", "1,3", "--slo-ms", "250", "--no-perf-analyzer", "--out-dir", str(tmp_path)]
    )
    assert settings.user_counts == (1, 3) and settings.slo_ms == 250
    assert not settings.perf_analyzer and settings.out_dir == tmp_path
    with pytest.raises(AttributeError):  # frozen: the settings travel unchanged
        settings.slo_ms = 1.0
    for bad in ("1,x", "0,2", ""):
        with pytest.raises(SystemExit):
            capacity.parse_args(["--steps", bad])


def test_the_step_recorder_keeps_only_what_ends_while_recording(loadtest_module):
    recorder = loadtest_module("capacity_ramp").StepRecorder()
    recorder.on_request(response_time=5.0)  # warm-up: not recorded
    recorder.start()
    recorder.on_request(response_time=7.0, name="score_batch[1]")
    error = RuntimeError("down")
    recorder.on_request(response_time=1.0, exception=error)
    recorder.on_request(response_time=1.0, exception=ValueError("later"))
    recorder.stop()
    recorder.on_request(response_time=9.0)
    assert recorder.latencies_ms == [7.0]
    assert recorder.failures == 2 and recorder.first_failure is error
    recorder.start()
    assert recorder.latencies_ms == [] and recorder.failures == 0
    assert recorder.first_failure is None


def test_thresholds_pass_a_run_within_them(thresholds):
    default = thresholds.Thresholds()
    assert thresholds.verdict(default, 100, 0, 40.0) == (0, [])
    tolerant = thresholds.Thresholds(max_fail_ratio=0.05, max_p99_ms=50.0)
    assert thresholds.verdict(tolerant, 100, 5, 50.0) == (0, [])  # at the limits still passes
    # Within them, but user code raised outside a request: Locust's own rule decides.
    assert thresholds.verdict(tolerant, 100, 1, 10.0, user_code_raised=True) == (None, [])


def test_thresholds_fail_a_run_past_them(thresholds):
    code, reasons = thresholds.verdict(thresholds.Thresholds(), 200, 1, 40.0)
    assert code == 1 and reasons == ["1 of 200 requests failed (0.50%), over --max-fail-ratio 0"]

    slow = thresholds.Thresholds(max_fail_ratio=0.01, max_p99_ms=100.0)
    assert thresholds.verdict(slow, 100, 1, 120.0) == (1, ["p99 120 ms, over --max-p99-ms 100"])
    code, reasons = thresholds.verdict(slow, 100, 2, 120.0, user_code_raised=True)
    assert code == 1 and len(reasons) == 2 and "2 of 100 requests failed" in reasons[0]

    assert thresholds.verdict(slow, 0, 0, None) == (1, ["no request was made"])
    assert thresholds.verdict(thresholds.Thresholds(max_p99_ms=1.0), 10, 0, None)[0] == 0


def test_threshold_options_are_checked(thresholds):
    assert thresholds.fail_ratio("0.01") == 0.01
    assert thresholds.positive_ms("250") == 250.0
    for parse, bad in [
        (thresholds.fail_ratio, "-0.1"),
        (thresholds.fail_ratio, "1.5"),
        (thresholds.positive_ms, "0"),
        (thresholds.positive_ms, "nan"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_run_passes_users_only_without_a_shape(loadtest_module):
    run = loadtest_module("run")
    args = run.parse_args(["--users", "3", "--run-time", "5s", "--", "--embedding"])
    command = run.locust_command(args, "127.0.0.1:1234")
    assert command[command.index("--host") + 1] == "127.0.0.1:1234"
    assert command[command.index("--users") + 1] == "3"
    assert command[command.index("--run-time") + 1] == "5s"
    assert command[-1] == "--embedding"
    assert command[command.index("--max-fail-ratio") + 1] == "0.0"
    assert "--max-p99-ms" not in command
    strict = run.parse_args(["--max-fail-ratio", "0.01", "--max-p99-ms", "250"])
    command = run.locust_command(strict, "127.0.0.1:1234")
    assert command[command.index("--max-fail-ratio") + 1] == "0.01"
    assert command[command.index("--max-p99-ms") + 1] == "250.0"
    with pytest.raises(SystemExit):
        run.parse_args(["--max-fail-ratio", "2"])

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
        *("--batch-size", "2", "--records-file", records, "--embedding", "--request-timeout", "5"),
        *("--max-fail-ratio", "0.01", "--max-p99-ms", "250"),
    )
    assert done.returncode == 0, done.stderr
    assert "UbmUser" in done.stdout
    assert locust_list("--no-such-option", "1").returncode == 2
    assert locust_list("--max-fail-ratio", "1.5").returncode == 2
