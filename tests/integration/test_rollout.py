"""Versioned rollout and rollback on a running tritonserver, under load, with nothing dropped.

Version 1 and version 2 are two tiny models with different weights, so every score says which
version answered it. While `ubm-client score` reads an endless stream of lines and Locust sends
requests of its own, `ubm-build rollout` switches the server to version 2 and `ubm-build
rollback` back to version 1.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from conftest import canary_records, export_tiny_model, make_tiny_model, write_tiny_repository

from ubm import UbmClient, UbmError
from ubm.records import parse_record
from ubm_build import export
from ubm_build.model.network import load_reader
from ubm_build.serving import server, versions

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
RECORDS = 200
ATOL = 1e-4
LINES_PER_TICK = 8
TICK_S = 0.02


class Versions:
    """A repository holding versions 1 and 2, and each version's score of every record."""

    def __init__(self, directory: Path, examples) -> None:
        self.repository = directory / "repository"
        candidates = [
            {"id": f"r{i}", "events": ex.to_record()["events"]}
            for i, ex in enumerate(examples["test"][:RECORDS])
        ]
        events = [parse_record(r).events for r in candidates]
        scores: dict[int, np.ndarray] = {}
        self._models = []
        for version, seed in ((1, 0), (2, 1)):
            model, model_dir = make_tiny_model(directory / f"model{seed}", examples, seed=seed)
            onnx = export_tiny_model(model, directory / f"model{seed}")
            self._models.append((model, model_dir, onnx))
            probabilities, _ = export.onnx_predict(*onnx, load_reader(model_dir), events)
            scores[version] = probabilities.astype(np.float64)
        # Two random models can happen to agree on a record: only the records they score
        # unambiguously apart say which version answered.
        apart = np.abs(scores[1] - scores[2]) > 2 * ATOL
        assert apart.sum() >= 0.9 * RECORDS
        self.records = [record for record, keep in zip(candidates, apart, strict=True) if keep]
        self.expected = {version: p[apart] for version, p in scores.items()}
        self.canary = canary_records(examples)

    def write(self, version: int) -> None:
        model, model_dir, onnx = self._models[version - 1]
        write_tiny_repository(self.repository, model, model_dir, onnx, self.canary)
        assert versions.pinned_version(self.repository) == version

    def version_of(self, index: int, probability: float) -> int:
        """Which version gave `probability` to record `index`."""
        for version, expected in self.expected.items():
            if abs(expected[index] - probability) <= ATOL:
                return version
        raise AssertionError(f"record {index}: {probability} is no version's score")


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, examples) -> Versions:
    return Versions(tmp_path_factory.mktemp("versions"), examples)


@pytest.fixture(scope="module")
def served(two_versions, tmp_path_factory) -> Iterator[server.TritonServer]:
    """A server started on version 1; version 2 is written while it runs."""
    two_versions.write(1)
    workdir = tmp_path_factory.mktemp("triton")
    with server.TritonServer(
        two_versions.repository, workdir=workdir, ports=server.Ports.free()
    ) as triton:
        two_versions.write(2)
        yield triton


def build_cli(triton: server.TritonServer, command: str, *extra: str):
    return subprocess.run(
        [
            str(BIN / "ubm-build"),
            command,
            *("--repository", str(triton.model_repository)),
            *("--run-dir", str(triton.workdir)),
            *("--url", triton.grpc_url),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def served_version(triton: server.TritonServer) -> str:
    with UbmClient(triton.grpc_url) as client:
        return ",".join(client.metadata()["versions"])


class Feeder(threading.Thread):
    """Writes record lines to the CLI's stdin, a few every tick, until stopped."""

    def __init__(self, stdin, records: list[dict]) -> None:
        super().__init__(daemon=True)
        self.stdin, self.records = stdin, records
        self.sent: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            lines = []
            for _ in range(LINES_PER_TICK):
                index = len(self.sent) % len(self.records)
                self.sent.append(index)
                lines.append(orjson.dumps(self.records[index]) + b"\n")
            self.stdin.write(b"".join(lines))
            self.stdin.flush()
            time.sleep(TICK_S)
        self.stdin.close()

    def wait_for(self, lines: int) -> None:
        while len(self.sent) < lines:
            time.sleep(0.05)


def test_rollout_and_rollback_under_load_drop_nothing(served, two_versions, tmp_path):
    assert served_version(served) == "1"
    output = tmp_path / "scores.jsonl"
    cli = subprocess.Popen(
        [
            *(str(BIN / "ubm-client"), "score", "-", "--url", served.grpc_url, "-o", str(output)),
            *("--batch-size", "16", "--concurrency", "1", "-q"),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    locust = subprocess.Popen(
        [
            *(sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py")),
            *("--host", served.grpc_url, "--headless", "--only-summary", "-u", "2", "-r", "2"),
            *("--run-time", "600s", "--batch-size", "4", "--csv", str(tmp_path / "ubm")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    feeder = Feeder(cli.stdin, two_versions.records)
    feeder.start()
    try:
        feeder.wait_for(300)
        rolled_out = build_cli(served, "rollout")
        assert rolled_out.returncode == 0, rolled_out.stderr
        assert served_version(served) == "2"
        assert versions.pinned_version(served.model_repository) == 2
        feeder.wait_for(len(feeder.sent) + 300)
        rolled_back = build_cli(served, "rollback")
        assert rolled_back.returncode == 0, rolled_back.stderr
        assert served_version(served) == "1"
        feeder.wait_for(len(feeder.sent) + 300)
    finally:
        feeder.stop.set()
        feeder.join()
        locust.send_signal(signal.SIGTERM)  # Locust stops and writes its statistics
    assert cli.wait(timeout=120) == 0, cli.stderr.read()
    locust_output, _ = locust.communicate(timeout=120)
    assert locust.returncode == 0, locust_output

    rows = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert len(rows) == len(feeder.sent) > 900
    answered_by = []
    for row, index in zip(rows, feeder.sent, strict=True):
        assert row["id"] == two_versions.records[index]["id"] and "error" not in row
        answered_by.append(two_versions.version_of(index, row["purchase_probability"]))
    # Old version before the switch, the new one after it, the old one after the rollback.
    runs = [v for i, v in enumerate(answered_by) if i == 0 or v != answered_by[i - 1]]
    assert runs == [1, 2, 1]

    with open(tmp_path / "ubm_stats.csv") as f:
        total = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0


def test_a_failed_canary_keeps_the_old_version(served, two_versions):
    before = int(served_version(served))
    pinned = versions.pinned_version(served.model_repository)
    other = 3 - before
    record = versions.version_dir(served.model_repository, "ubm", other) / versions.BUILD_FILE
    honest = record.read_text()
    build = orjson.loads(honest)
    build["canary_probabilities"] = [p + 0.01 for p in build["canary_probabilities"]]
    record.write_bytes(orjson.dumps(build))
    try:
        refused = build_cli(served, "rollout", "--to", str(other))
    finally:
        record.write_text(honest)
    assert refused.returncode == 1, refused.stderr
    assert "canary" in refused.stderr and "the old version still serves" in refused.stderr
    assert served_version(served) == str(before)
    assert versions.pinned_version(served.model_repository) == pinned
    unserved = UbmClient(served.grpc_url, model_version=other, retry_deadline_s=0)
    with unserved as client, pytest.raises(UbmError):
        client.score(two_versions.records[:1])


def test_a_client_can_pin_the_served_version(served, two_versions):
    version = int(served_version(served))
    with UbmClient(served.grpc_url, model_version=version) as client:
        (score,) = client.score(two_versions.records[:1])
    assert two_versions.version_of(0, score.purchase_probability) == version


def test_info_names_the_served_version_and_its_build(served):
    done = subprocess.run(
        [str(BIN / "ubm-client"), "info", "--url", served.grpc_url],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    described = orjson.loads(done.stdout)
    assert described["version"] == served_version(served)
    assert described["build"]["build_version"] == described["version"]
