"""Client-side scale-out against three real tritonservers serving one repository.

The replicas listen on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (Linux routes all of 127/8 to lo) on
one gRPC port, as the pods behind a Kubernetes headless Service do, and a tiny DNS server
(dnslib) answers the name ``ubm.test`` with the three addresses. Through the SDK's own round
robin (``--url a,b,c``) and through gRPC's (``--url dns://DNS_SERVER/ubm.test:PORT``, see
`ubm.config.LB_POLICY`) requests spread over the replicas; one killed mid-run (SIGKILL, stubs
included) costs no line, and it gets requests again once it is back. Locust's gRPC user, with
the SDK's retries off, shows what the kill costs without them: only failures it explains.

The tests print their figures (``-s``); with ``UBM_REPLICA_FIGURES=path.json`` they also write
them there, each test under its own key.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer
from test_faults import RESTART_TIMEOUT_S, UBM_CLIENT, CrashableServer
from test_rollout import Feeder
from tritonclient.grpc import InferenceServerClient

from ubm_build.bench.served import ensemble_counts
from ubm_build.serving import server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
DNS_NAME = "ubm.test"
BACK_IN_ROTATION_S = 60.0
FIGURES_ENV = "UBM_REPLICA_FIGURES"

LOCUST_USERS = 6
LOCUST_BATCH_SIZE = 4
WARM_S = 5.0
"""Load on all three replicas before the kill."""
DOWN_S = 3.0
"""How long the killed replica stays down before it is started again (which takes longer)."""
AFTER_S = 5.0
"""Load after the restarted replica took its first request."""
SAMPLE_S = 0.5
LONGEST_STALL_S = 5.0
"""The longest the surviving replicas may go without answering a request during the outage."""
FAILURE_KINDS = {
    "connection lost (in flight on the killed replica)": (
        "Socket closed",
        "Connection reset",
        "Broken pipe",
    ),
    "connection refused (sent to the killed replica)": (
        "failed to connect to all addresses",
        "Connection refused",
    ),
}
"""What a request may fail with when a replica dies under it, by the error's message: each is a
`ServerUnavailableError` (gRPC UNAVAILABLE), which the SDK retries unless told not to."""


def shared_grpc_port() -> int:
    """A TCP port free on each of `HOSTS`."""
    for _ in range(20):
        port = server.free_port()
        try:
            for host in HOSTS:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no TCP port is free on all of {HOSTS}")


class Replica(CrashableServer):
    """A `CrashableServer` on its own loopback address and the gRPC port the others share."""

    def __init__(self, repository: Path, workdir: Path, host: str, grpc_port: int) -> None:
        super().__init__(repository, workdir)
        self.host = host
        self.ports = server.Ports(
            grpc=grpc_port, http=server.free_port(), metrics=server.free_port()
        )
        self.grpc_url = f"{host}:{grpc_port}"

    def launch(self) -> None:
        """Start the server without waiting for it to be ready (see `CrashableServer.start`)."""
        self._starts += 1
        workdir = self.workdir / f"start{self._starts}"
        self._server = server.TritonServer(
            self.repository, workdir=workdir, ports=self.ports, host=self.host
        )
        self._server.start()

    def wait_ready(self) -> None:
        self._server.wait_ready(timeout_s=RESTART_TIMEOUT_S)

    def start(self) -> None:
        self.launch()
        self.wait_ready()


@pytest.fixture
def replicas(tiny_repository, tmp_path) -> Iterator[list[Replica]]:
    port = shared_grpc_port()
    servers = [
        Replica(tiny_repository, tmp_path / f"replica{i}", host, port)
        for i, host in enumerate(HOSTS)
    ]
    try:
        for replica in servers:  # started together: quicker, even on two cores
            replica.launch()
        for replica in servers:
            replica.wait_ready()
        yield servers
    finally:
        for replica in servers:
            replica.stop()


class LoopbackResolver(BaseResolver):
    """Answers `DNS_NAME`'s A records with `HOSTS` (and no AAAA), any other name NXDOMAIN."""

    def __init__(self) -> None:
        self.queries = 0

    def resolve(self, request: Any, handler: Any) -> Any:
        self.queries += 1
        reply = request.reply()
        question = request.q
        if str(question.qname).rstrip(".").lower() != DNS_NAME:
            reply.header.rcode = RCODE.NXDOMAIN
        elif question.qtype == QTYPE.A:
            for host in HOSTS:
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(host), ttl=60))
        return reply


@pytest.fixture
def dns_server() -> Iterator[tuple[str, LoopbackResolver]]:
    """A DNS server on a free UDP port of 127.0.0.1: its ``host:port`` and its resolver."""
    resolver = LoopbackResolver()
    dns = DNSServer(resolver, address="127.0.0.1", port=0, logger=DNSLogger(logf=lambda _: None))
    dns.start_thread()
    try:
        yield f"127.0.0.1:{dns.server.server_address[1]}", resolver
    finally:
        dns.stop()
        dns.server.server_close()


def dns_target(dns_address: str, replicas: list[Replica]) -> str:
    """gRPC's DNS target for the replicas, resolved by the test's DNS server."""
    return f"dns://{dns_address}/{DNS_NAME}:{replicas[0].ports.grpc}"


def requests_served(replica: CrashableServer) -> int:
    """Successful ensemble requests since the replica (last) started; 0 while it is down."""
    with closing(InferenceServerClient(replica.grpc_url)) as client:
        counts = ensemble_counts(client)
    return counts[0] if counts else 0


def served(replicas: list[Replica]) -> list[int]:
    return [requests_served(replica) for replica in replicas]


def wait_until_served(replica: Replica) -> float:
    """Wait until the replica has answered a request; returns the seconds it took."""
    started = time.monotonic()
    while requests_served(replica) == 0:
        assert time.monotonic() - started < BACK_IN_ROTATION_S, f"{replica.host} got no request"
        time.sleep(0.2)
    return time.monotonic() - started


def record_figures(name: str, figures: dict[str, Any]) -> None:
    """Print the figures; add them to the JSON file `FIGURES_ENV` names, if it is set."""
    print(f"\n{name}: {json.dumps(figures, indent=2)}")
    if path := os.environ.get(FIGURES_ENV):
        target = Path(path)
        recorded = json.loads(target.read_text()) if target.exists() else {}
        recorded[name] = figures
        target.write_text(json.dumps(recorded, indent=2) + "\n")


@pytest.mark.parametrize("target", ["list", "dns"])
def test_a_replica_killed_and_back_mid_run_loses_no_line(
    replicas, dns_server, target, examples, tmp_path
):
    """``--url a,b,c`` (the SDK's round robin) or one ``dns:`` target (gRPC's round_robin)."""
    dns_address, resolver = dns_server
    if target == "dns":
        url = dns_target(dns_address, replicas)
    else:
        url = ",".join(replica.grpc_url for replica in replicas)
    records = [{**ex.to_record(), "id": f"r{i}"} for i, ex in enumerate(examples["test"][:400])]
    output = tmp_path / "scores.jsonl"
    cli = subprocess.Popen(
        [
            *(UBM_CLIENT, "score", "-", "--url", url, "-o", str(output), "-q"),
            *("--batch-size", "8", "--concurrency", "3"),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    feeder = Feeder(cli.stdin, records)
    feeder.start()
    try:
        feeder.wait_for(300)
        spread = served(replicas)
        assert all(count > 0 for count in spread), spread  # every replica takes requests
        replicas[0].kill()
        feeder.wait_for(len(feeder.sent) + 300)
        during = served(replicas)
        replicas[0].start()
        back_after_s = wait_until_served(replicas[0])
        feeder.wait_for(len(feeder.sent) + 100)
    finally:
        feeder.stop.set()
        feeder.join()
    assert cli.wait(timeout=120) == 0, cli.stderr.read().decode()

    rows = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert [row["id"] for row in rows] == [records[i]["id"] for i in feeder.sent]
    assert all("purchase_probability" in row for row in rows)
    assert len(rows) > 700
    if target == "dns":
        assert resolver.queries > 0  # the name was resolved by the test's DNS server
    record_figures(
        f"cli_{target}",
        {
            "url": url,
            "lines_scored": len(rows),
            "requests_per_replica_before_kill": spread,
            "requests_per_replica_while_one_was_down": during,
            "restarted_replica_back_after_s": round(back_after_s, 2),
        },
    )


class Sampler(threading.Thread):
    """Reads every replica's request count each `SAMPLE_S` until stopped."""

    def __init__(self, replicas: list[Replica]) -> None:
        super().__init__(daemon=True)
        self.replicas = replicas
        self.samples: list[tuple[float, list[int]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            self.samples.append((time.monotonic(), served(self.replicas)))

    def longest_stall_s(self, start: float, end: float, replicas: slice) -> float:
        """The longest time between `start` and `end` in which ``replicas`` answered nothing."""
        window = [(t, sum(c[replicas])) for t, c in self.samples if start <= t <= end]
        assert len(window) >= 2, "too few samples"
        longest, since = 0.0, window[0][0]
        for (_, before), (t, after) in pairwise(window):
            if after > before:
                since = t
            longest = max(longest, t - since)
        return longest


def failure_kind(error: str) -> str | None:
    """The `FAILURE_KINDS` entry of a Locust failure's error (the exception's repr), if any."""
    if not error.startswith("ServerUnavailableError("):
        return None
    for kind, messages in FAILURE_KINDS.items():
        if any(message in error for message in messages):
            return kind
    return None


def test_locust_through_dns_explains_every_failure_of_a_kill(replicas, dns_server, tmp_path):
    """The project's Locust user scores through the ``dns:`` target with the SDK's retries off
    (``--retry-deadline 0``, so that each request the kill breaks shows as a failure) while a
    replica is killed and started again."""
    dns_address, _ = dns_server
    url = dns_target(dns_address, replicas)
    log = tmp_path / "locust.log"
    with log.open("w") as out:
        locust = subprocess.Popen(
            [
                *(sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py")),
                *("--host", url, "--headless", "--only-summary", "--run-time", "300s"),
                *("-u", str(LOCUST_USERS), "-r", str(LOCUST_USERS)),
                *("--batch-size", str(LOCUST_BATCH_SIZE), "--retry-deadline", "0"),
                *("--max-fail-ratio", "1", "--csv", str(tmp_path / "ubm")),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    sampler = Sampler(replicas)
    try:
        for replica in replicas:
            wait_until_served(replica)
        sampler.start()
        time.sleep(WARM_S)
        before = served(replicas)
        killed_at, killed_wall = time.monotonic(), time.time()
        replicas[0].kill()
        time.sleep(DOWN_S)
        replicas[0].start()
        ready_at = time.monotonic()
        during = [count - was for count, was in zip(served(replicas), before, strict=True)]
        during[0] = 0  # the killed replica's count starts again from 0
        back_after_s = wait_until_served(replicas[0])
        back_wall = time.time()
        time.sleep(AFTER_S)
        end = served(replicas)
    finally:
        sampler.stop.set()
        locust.send_signal(signal.SIGTERM)  # Locust stops and writes its statistics
        try:
            locust.wait(timeout=60)
        finally:
            if locust.poll() is None:
                locust.kill()
        sampler.join()
    output = log.read_text()
    assert locust.returncode == 0, output
    after = [end[0], *(e - b - d for e, b, d in zip(end[1:], before[1:], during[1:], strict=True))]

    with open(tmp_path / "ubm_stats.csv") as f:
        total = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
    with open(tmp_path / "ubm_failures.csv") as f:
        failures = list(csv.DictReader(f))
    with open(tmp_path / "ubm_exceptions.csv") as f:
        assert list(csv.DictReader(f)) == []  # the user's code never raised
    by_kind: dict[str, int] = {}
    for row in failures:
        kind = failure_kind(row["Error"])
        assert kind is not None, f"unexplained failure: {row}"
        by_kind[kind] = by_kind.get(kind, 0) + int(row["Occurrences"])
    failed = int(total["Failure Count"])
    assert sum(by_kind.values()) == failed
    # At most one request per user was in flight on the killed replica, and one more may have
    # been sent to it as its connection broke; none failed before the kill or once it was back.
    assert failed <= 2 * LOCUST_USERS, by_kind
    with open(tmp_path / "ubm_stats_history.csv") as f:
        history = [
            (int(row["Timestamp"]), int(row["Total Failure Count"]))
            for row in csv.DictReader(f)
            if row["Name"] == "Aggregated"
        ]
    failed_before_kill = max((n for t, n in history if t < killed_wall - 1), default=0)
    failed_once_back = failed - min((n for t, n in history if t > back_wall + 1), default=failed)
    assert failed_before_kill == failed_once_back == 0, history

    # The survivors answered all along, the restarted replica again before the end.
    assert during[1] > 0 and during[2] > 0, during
    stall_s = sampler.longest_stall_s(killed_at, ready_at, slice(1, None))
    assert stall_s < LONGEST_STALL_S, stall_s
    assert all(count > 0 for count in after), after
    record_figures(
        "locust_dns",
        {
            "url": url,
            "users": LOCUST_USERS,
            "batch_size": LOCUST_BATCH_SIZE,
            "requests_per_replica": {
                "before_kill": before,
                "while_down": during,
                "after_restart": after,
            },
            "down_s": round(ready_at - killed_at, 1),
            "restarted_replica_back_after_s": round(back_after_s, 2),
            "survivors_longest_stall_s": round(stall_s, 1),
            "locust_requests": int(total["Request Count"]),
            "locust_failures": failed,
            "failures_by_kind": by_kind,
            "failure_errors": {row["Error"]: int(row["Occurrences"]) for row in failures},
        },
    )
