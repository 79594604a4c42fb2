"""Client-side scale-out against three real tritonservers on loopback, serving one repository:
`ubm-client score --url a,b,c` spreads its requests over the replicas, keeps going when one is
killed (SIGKILL, stubs included) and sends it requests again once it is back."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import closing

import orjson
import pytest
from test_faults import UBM_CLIENT, CrashableServer
from test_rollout import Feeder
from tritonclient.grpc import InferenceServerClient

from ubm_build.bench.served import ensemble_counts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPLICAS = 3
BACK_IN_ROTATION_S = 60.0


@pytest.fixture
def replicas(tiny_repository, tmp_path) -> Iterator[list[CrashableServer]]:
    servers = [CrashableServer(tiny_repository, tmp_path / f"replica{i}") for i in range(REPLICAS)]
    try:
        for replica in servers:
            replica.start()
        yield servers
    finally:
        for replica in servers:
            replica.stop()


def requests_served(replica: CrashableServer) -> int:
    """Successful ensemble requests since the replica (last) started."""
    with closing(InferenceServerClient(replica.grpc_url)) as client:
        counts = ensemble_counts(client)
    return counts[0] if counts else 0


def test_a_replica_killed_and_back_mid_run_loses_no_line(replicas, examples, tmp_path):
    records = [{**ex.to_record(), "id": f"r{i}"} for i, ex in enumerate(examples["test"][:400])]
    output = tmp_path / "scores.jsonl"
    urls = ",".join(replica.grpc_url for replica in replicas)
    cli = subprocess.Popen(
        [
            *(UBM_CLIENT, "score", "-", "--url", urls, "-o", str(output), "-q"),
            *("--batch-size", "8", "--concurrency", "3"),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    feeder = Feeder(cli.stdin, records)
    feeder.start()
    try:
        feeder.wait_for(300)
        spread = [requests_served(replica) for replica in replicas]
        assert all(count > 0 for count in spread), spread  # every replica takes requests
        replicas[0].kill()
        feeder.wait_for(len(feeder.sent) + 300)
        replicas[0].start()
        deadline = time.monotonic() + BACK_IN_ROTATION_S
        while requests_served(replicas[0]) == 0:
            assert time.monotonic() < deadline, "the restarted replica got no requests"
            time.sleep(0.2)
        feeder.wait_for(len(feeder.sent) + 100)
    finally:
        feeder.stop.set()
        feeder.join()
    assert cli.wait(timeout=120) == 0, cli.stderr.read().decode()

    rows = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert [row["id"] for row in rows] == [records[i]["id"] for i in feeder.sent]
    assert all("purchase_probability" in row for row in rows)
    assert len(rows) > 700
