"""ubm-client under faults, against real tritonservers: restarts, outages, bad input, load.

Each test is bounded in time and uses loopback addresses only. The tests that kill a server
start their own on free ports, so that the other tests' server is left alone.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest
from click.testing import CliRunner

from ubm import UbmClient, parse_record
from ubm.cli import main
from ubm.records import MAX_EVENTS
from ubm_build.serving import server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

UBM_CLIENT = str(Path(sys.executable).parent / "ubm-client")
RESTART_TIMEOUT_S = 60.0


class CrashableServer:
    """A tritonserver that can be killed and started again on the same ports."""

    def __init__(self, repository: Path, workdir: Path) -> None:
        self.repository = repository
        self.workdir = workdir
        self.ports = server.Ports.free()
        self.grpc_url = f"127.0.0.1:{self.ports.grpc}"
        self._server: server.TritonServer | None = None
        self._starts = 0

    def start(self) -> None:
        # A fresh work directory each time: the killed server's backend stubs may still be
        # exiting, and their executables cannot be overwritten until they have.
        self._starts += 1
        workdir = self.workdir / f"start{self._starts}"
        self._server = server.TritonServer(self.repository, workdir=workdir, ports=self.ports)
        self._server.start()
        self._server.wait_ready(timeout_s=RESTART_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL the server and its python-backend stubs, as a crash of the host would."""
        process = psutil.Process(self._server.pid)
        victims = [process, *process.children(recursive=True)]
        for victim in victims:
            victim.kill()
        psutil.wait_procs(victims, timeout=10)
        self._server.stop()
        self._server = None

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture
def own_server(tiny_repository, tmp_path) -> Iterator[CrashableServer]:
    crashable = CrashableServer(tiny_repository, tmp_path / "triton")
    crashable.start()
    try:
        yield crashable
    finally:
        crashable.stop()


def write_records(path: Path, examples, n: int) -> list[str]:
    """``n`` records with unique ids, cycling through the real test-day examples."""
    ids = []
    with path.open("wb") as out:
        for i in range(n):
            record = examples["test"][i % len(examples["test"])].to_record()
            record["id"] = f"r{i}"
            ids.append(record["id"])
            out.write(orjson.dumps(record) + b"\n")
    return ids


def start_score(source: Path, output: Path, url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [UBM_CLIENT, "score", str(source), "-o", str(output), "--url", url, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for_rows(output: Path, n_rows: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not (output.exists() and output.read_bytes().count(b"\n") >= n_rows):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)


def output_ids(output: Path) -> list[str]:
    """The ids of the output rows; fails unless every line is a complete JSON score row."""
    rows = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert all("purchase_probability" in row for row in rows)
    return [row["id"] for row in rows]


@pytest.mark.parametrize("how", ["crash", "graceful"])
def test_a_run_survives_a_server_restart(own_server, examples, tmp_path, how):
    """A crash (the server and its stubs SIGKILLed), or a graceful stop as a rollout or a
    Kubernetes pod termination does it (Triton unloads the models and answers NOT_FOUND
    meanwhile), then a start on the same ports."""
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_records(source, examples, 3000)
    run = start_score(
        source, output, own_server.grpc_url, "--batch-size", "8", "--concurrency", "4"
    )
    wait_for_rows(output, 100, run)
    assert run.poll() is None, "the run ended before the restart"
    if how == "crash":
        own_server.kill()
        time.sleep(1)  # some requests fail against the dead port before it comes back
    else:
        own_server.stop()
        time.sleep(3)
    own_server.start()
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr.decode()
    assert output_ids(output) == ids  # one row per line, in order: no loss, no duplicate


def test_ctrl_c_keeps_the_complete_rows_exits_130_and_resume_finishes(triton, examples, tmp_path):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_records(source, examples, 3000)
    # One record per request, one request at a time: the run lasts, however fast the machine.
    # A suite started as a background job has SIGINT ignored, and a child inherits that; a
    # caught handler here is reset to the default by exec, as in a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run = start_score(
            source, output, triton.grpc_url, "--batch-size", "1", "--concurrency", "1"
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    wait_for_rows(output, 50, run)
    assert run.poll() is None, "the run ended before Ctrl-C"
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 130, stderr.decode()
    assert b"interrupted" in stderr and b"Traceback" not in stderr
    done = output_ids(output)  # every row complete
    assert done == ids[: len(done)] and len(done) < len(ids)

    resumed = start_score(source, output, triton.grpc_url, "--resume", "--batch-size", "32")
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr.decode()
    assert output_ids(output) == ids


def test_an_outage_past_the_retry_deadline_exits_2_and_resume_finishes(
    own_server, examples, tmp_path
):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_records(source, examples, 1000)
    url = own_server.grpc_url
    run = start_score(source, output, url, "--batch-size", "8", "--retry-deadline", "2")
    wait_for_rows(output, 50, run)
    assert run.poll() is None, "the run ended before the outage"
    own_server.kill()
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 2, stderr.decode()
    assert b"giving up" in stderr
    done = output_ids(output)
    assert 50 <= len(done) < len(ids)
    assert done == ids[: len(done)]

    own_server.start()
    resumed = start_score(source, output, url, "--resume", "--batch-size", "8")
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr.decode()
    assert output_ids(output) == ids
    assert f"{len(done)} skipped" in stderr.decode()


def test_every_kind_of_malformed_line_gets_one_error_row_and_the_run_goes_on(triton, examples):
    good = [orjson.dumps(ex.to_record()) for ex in examples["test"][:3]]
    event = {"ts": 1512172800, "type": "view", "item": "1", "category": "2"}
    bad = {
        "not JSON": b"{this is not json",
        "a JSON array": b"[1, 2, 3]",
        "id of a wrong type": orjson.dumps({"id": [1], "events": [event]}),
        "ts of a wrong type": orjson.dumps({"id": "t", "events": [{**event, "ts": "noon"}]}),
        "events not a list": orjson.dumps({"id": "l", "events": "view"}),
        "missing id": orjson.dumps({"events": [event]}),
        "missing events": orjson.dumps({"id": "m"}),
        "missing item": orjson.dumps({"id": "i", "events": [{"ts": 1512172800, "type": "view"}]}),
        "empty events": orjson.dumps({"id": "e", "events": []}),
        "unknown event type": orjson.dumps({"id": "k", "events": [{**event, "type": "click"}]}),
        "not UTF-8": b'{"id": "\xff\xfe", "events": []}',
        "blank": b"   ",
        "a 10 MB line": orjson.dumps({"id": "big", "events": [{**event, "item": "9" * 10**7}]}),
        f"{2 * MAX_EVENTS} events": orjson.dumps(
            {"id": "many", "events": [event] * 2 * MAX_EVENTS}
        ),
    }
    lines = [good[0], *bad.values(), good[1]]
    lines.insert(8, good[2])
    result = CliRunner().invoke(
        main,
        ["score", "-", "--url", triton.grpc_url, "--batch-size", "4", "-q"],
        input=b"\n".join(lines) + b"\n",
    )
    assert result.exit_code == 1, result.output
    rows = [orjson.loads(line) for line in result.stdout_bytes.splitlines()]
    assert len(rows) == len(lines)
    errors = [row for row in rows if "error" in row]
    assert [row["line"] for row in errors] == [
        n for n, raw in enumerate(lines, start=1) if raw not in good
    ]
    assert len(errors) == len(bad)
    by_id = {row["id"]: row["error"] for row in errors if row["id"] is not None}
    assert "longer than 256 characters" in by_id["big"]
    assert f"at most {MAX_EVENTS} are accepted" in by_id["many"]
    assert sum("purchase_probability" in row for row in rows) == len(good)


def test_32_concurrent_clients_each_get_their_own_answers(triton, examples):
    records = [parse_record(ex.to_record()) for ex in examples["test"][:48]]
    with UbmClient(triton.grpc_url) as client:
        alone = {r.id: client.score_batch([r])[0].purchase_probability for r in records}

    failures: list[BaseException] = []
    answers: dict[int, list[tuple[str, float]]] = {}

    def one_client(index: int) -> None:
        rng = random.Random(index)
        mine = rng.sample(records, len(records))
        try:
            with UbmClient(triton.grpc_url, batch_size=rng.choice([1, 4, 7, 16])) as client:
                scores = client.score(mine)
            answers[index] = [(s.id, s.purchase_probability) for s in scores]
            assert [s.id for s in scores] == [r.id for r in mine]
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures[0]
    assert len(answers) == 32
    for scored in answers.values():
        assert [p for _, p in scored] == pytest.approx([alone[i] for i, _ in scored], abs=1e-5)
