"""UbmClient without tritonserver: an in-process gRPC fake of Triton's inference service."""

from __future__ import annotations

import contextlib
import itertools
import random
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from ubm import (
    AsyncUbmClient,
    AuthenticationError,
    Event,
    InvalidRecordError,
    InvalidRequestError,
    ModelNotReadyError,
    Record,
    RequestTimeoutError,
    Score,
    ServerError,
    ServerUnavailableError,
    TlsConfig,
    UbmClient,
    contract,
    parse_record,
)
from ubm._base import RetryPolicy
from ubm._endpoints import parse_urls
from ubm.config import channel_options
from ubm.exceptions import from_triton_error

HIDDEN = 4
T0 = 1512172800  # 2017-12-02 00:00 UTC


def record(record_id: str, n_events: int = 1) -> dict:
    events = [{"ts": T0 - i, "type": "view", "item": f"i{i}"} for i in range(n_events)]
    return {"id": record_id, "events": events}


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers like the ubm ensemble: probability = events / 10, embedding = row index."""

    def __init__(self) -> None:
        self.requests: list[service_pb2.ModelInferRequest] = []
        self.fail_with: list[grpc.StatusCode] = []
        """Status codes to abort the next infer calls with, one per call."""
        self.fail_message = "injected failure"
        self.reject_ids: set[str] = set()
        self.model_ready = True
        self.delay_s = 0.0
        self.headers: list[dict[str, str]] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=self.model_ready)

    def ModelMetadata(self, request, context):
        return service_pb2.ModelMetadataResponse(
            name=request.name, versions=["1"], platform="ensemble"
        )

    def ModelConfig(self, request, context):
        return service_pb2.ModelConfigResponse(
            config=model_config_pb2.ModelConfig(name=request.name, max_batch_size=256)
        )

    def ModelInfer(self, request, context):
        with self._lock:
            self.requests.append(request)
            self.headers.append(dict(context.invocation_metadata()))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return self._infer(request, context)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _infer(self, request, context):
        time.sleep(self.delay_s)
        if self.fail_with:
            context.abort(self.fail_with.pop(0), self.fail_message)
        payloads = deserialize_bytes_tensor(request.raw_input_contents[0])
        for i, payload in enumerate(payloads):
            if orjson.loads(payload)["id"] in self.reject_ids:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"record {i}: rejected")
        n = len(payloads)
        arrays = {
            contract.PURCHASE_PROBABILITY: np.array(
                [[len(orjson.loads(p)["events"]) / 10] for p in payloads], dtype=np.float32
            ),
            contract.EMBEDDING: np.repeat(np.arange(n, dtype=np.float32)[:, None], HIDDEN, 1),
        }
        response = service_pb2.ModelInferResponse(model_name=request.model_name)
        for output in request.outputs:
            array = arrays[output.name]
            response.outputs.add(name=output.name, datatype="FP32", shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response

    def sent_rows(self, request_index: int) -> list[dict]:
        raw = self.requests[request_index].raw_input_contents[0]
        return [orjson.loads(p) for p in deserialize_bytes_tensor(raw)]


@contextlib.contextmanager
def serve_fake() -> Iterator[tuple[FakeTriton, str]]:
    fake = FakeTriton()
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture
def fake_triton() -> Iterator[tuple[FakeTriton, str]]:
    with serve_fake() as served:
        yield served


@pytest.fixture
def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_score_returns_scores_in_input_order_in_batches_of_batch_size(connect, fake_triton):
    fake, url = fake_triton
    records = [record(f"u{i}", n_events=i + 1) for i in range(5)]
    with connect(url, batch_size=2) as client:
        scores = client.score(records)
    assert [s.id for s in scores] == ["u0", "u1", "u2", "u3", "u4"]
    assert [s.purchase_probability for s in scores] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert all(s.embedding is None for s in scores)
    assert [len(r.raw_input_contents) for r in fake.requests] == [1, 1, 1]
    assert [len(fake.sent_rows(i)) for i in range(3)] == [2, 2, 1]
    assert [o.name for o in fake.requests[0].outputs] == [contract.PURCHASE_PROBABILITY]
    assert list(fake.requests[0].inputs[0].shape) == [2, 1]


def test_score_with_embedding_requests_and_returns_it(connect, fake_triton):
    fake, url = fake_triton
    with connect(url) as client:
        scores = client.score([record("a"), record("b")], embedding=True)
    assert {o.name for o in fake.requests[0].outputs} == {
        contract.PURCHASE_PROBABILITY,
        contract.EMBEDDING,
    }
    assert scores[1] == Score(id="b", purchase_probability=pytest.approx(0.1), embedding=(1.0,) * 4)
    assert scores[1].to_dict()["embedding"] == [1.0] * HIDDEN


def test_score_sends_the_validated_record(connect, fake_triton):
    fake, url = fake_triton
    raw = {"id": 7, "extra": "dropped", "events": record("x", n_events=3)["events"]}
    with connect(url) as client:
        client.score([raw, parse_record(record("parsed"))])
    sent = fake.sent_rows(0)
    assert sent[0]["id"] == "7" and "extra" not in sent[0]
    assert [e["ts"] for e in sent[0]["events"]] == [T0 - 2, T0 - 1, T0]
    assert sent[1]["id"] == "parsed"


def test_invalid_record_is_reported_with_its_index_and_nothing_is_sent(connect, fake_triton):
    fake, url = fake_triton
    with connect(url) as client, pytest.raises(InvalidRecordError) as info:
        client.score([record("ok"), {"id": "bad", "events": []}])
    assert info.value.index == 1
    assert str(info.value) == "record 1: events must not be empty"
    assert fake.requests == []


def test_invalid_argument_from_the_server_is_not_retried(connect, fake_triton):
    fake, url = fake_triton
    fake.reject_ids = {"b"}
    with (
        connect(url, backoff_s=0) as client,
        pytest.raises(InvalidRequestError, match="record 1"),
    ):
        client.score([record("a"), record("b")])
    assert len(fake.requests) == 1


def test_unavailable_is_retried_until_the_server_answers(connect, fake_triton):
    fake, url = fake_triton
    fake.fail_with = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED]
    with connect(url, retry_deadline_s=5, backoff_s=0) as client:
        assert [s.id for s in client.score([record("a")])] == ["a"]
    assert len(fake.requests) == 3


def test_gives_up_once_the_retry_deadline_has_passed(connect, fake_triton):
    fake, url = fake_triton
    fake.fail_with = [grpc.StatusCode.RESOURCE_EXHAUSTED] * 1000
    started = time.monotonic()
    with (
        connect(url, retry_deadline_s=1.0, backoff_s=0.05, max_backoff_s=0.05) as client,
        pytest.raises(ServerUnavailableError, match="injected failure") as info,
    ):
        client.score([record("a")])
    assert isinstance(info.value.__cause__, InferenceServerException)
    # It stops once the next retry would start after the deadline (a busy machine may slow
    # each attempt, so the bounds are loose).
    assert 0.9 <= time.monotonic() - started < 10
    assert 2 <= len(fake.requests) < 1000


def test_a_slow_server_raises_request_timeout(connect, fake_triton):
    fake, url = fake_triton
    fake.delay_s = 0.5
    with connect(url, timeout_s=0.05) as client, pytest.raises(RequestTimeoutError):
        client.score([record("a")])
    assert len(fake.requests) == 1


def test_unreachable_server_raises_server_unavailable_quickly(connect, unused_url):
    started = time.monotonic()
    with connect(unused_url, retry_deadline_s=0.5, backoff_s=0.01) as client:
        with pytest.raises(ServerUnavailableError):
            client.score([record("a")])
        assert client.is_ready() is False
    assert time.monotonic() - started < 5


def test_is_ready_needs_the_model_ready_too(connect, fake_triton):
    fake, url = fake_triton
    with connect(url) as client:
        assert client.is_ready() is True
        fake.model_ready = False
        assert client.is_ready() is False


def test_metadata_is_a_json_dict(connect, fake_triton):
    _, url = fake_triton
    with connect(url) as client:
        assert client.metadata() == {"name": "ubm", "versions": ["1"], "platform": "ensemble"}


def test_a_closed_client_refuses_calls():
    client = UbmClient()
    client.close()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.score([record("a")])
    with pytest.raises(RuntimeError, match="closed"), client:
        pass


@pytest.mark.parametrize(
    "settings",
    [
        {"batch_size": 0},
        {"batch_size": contract.MAX_BATCH_SIZE + 1},
        {"timeout_s": 0},
        {"retry_deadline_s": -1},
        {"backoff_s": -0.1},
    ],
)
def test_settings_out_of_range_raise_value_error(settings):
    with pytest.raises(ValueError):
        UbmClient(**settings)


def test_score_batch_refuses_an_empty_or_oversized_batch(connect, unused_url):
    one = parse_record(record("a"))
    with connect(unused_url) as client:
        for records in ([], [one] * (contract.MAX_BATCH_SIZE + 1)):
            with pytest.raises(ValueError, match="a batch holds"):
                client.score_batch(records)


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServerUnavailableError),
        ("StatusCode.RESOURCE_EXHAUSTED", "queue is full", ServerUnavailableError),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", RequestTimeoutError),
        ("StatusCode.INVALID_ARGUMENT", "record 3: events must not be empty", InvalidRequestError),
        (
            "StatusCode.NOT_FOUND",
            "Request for unknown model: 'ubm' is not found",
            ModelNotReadyError,
        ),
        ("StatusCode.UNAVAILABLE", "'ubm' version 1 is not at ready state", ModelNotReadyError),
        (
            "StatusCode.UNAVAILABLE",
            "in ensemble 'ubm', Request timeout expired",
            RequestTimeoutError,
        ),
        ("StatusCode.INTERNAL", "boom", ServerError),
    ],
)
def test_from_triton_error_maps_the_grpc_status(status, message, expected):
    error = from_triton_error(InferenceServerException(message, status=status))
    assert type(error) is expected
    assert message in str(error)


def test_unmapped_status_keeps_the_status_in_the_message():
    error = from_triton_error(InferenceServerException("boom", status="StatusCode.INTERNAL"))
    assert str(error) == "[StatusCode.INTERNAL] boom"


def test_backoff_is_full_jitter_below_a_doubling_capped_limit():
    policy = RetryPolicy(deadline_s=60, backoff_s=0.2, max_backoff_s=1.0)
    rng = random.Random(0)
    for attempt, cap in enumerate([0.2, 0.4, 0.8, 1.0, 1.0]):
        delays = [policy.delay_s(attempt, rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= cap
        assert max(delays) > 0.9 * cap


def error(status: str | None) -> InferenceServerException:
    return InferenceServerException("x", status=status)


def test_only_unavailable_and_resource_exhausted_are_retried_and_only_before_the_deadline():
    policy = RetryPolicy(deadline_s=10, backoff_s=1, max_backoff_s=1)
    assert policy.next_delay_s(error("StatusCode.UNAVAILABLE"), 0, elapsed_s=0) <= 1
    assert policy.next_delay_s(error("StatusCode.RESOURCE_EXHAUSTED"), 50, elapsed_s=8.9) <= 1
    rng = random.Random(0)
    late = [policy.next_delay_s(error("StatusCode.UNAVAILABLE"), 9, 9.5, rng) for _ in range(50)]
    assert None in late and all(d is None or d <= 0.5 for d in late)
    assert policy.next_delay_s(error("StatusCode.UNAVAILABLE"), 1, elapsed_s=10.1) is None
    for status in ("StatusCode.INVALID_ARGUMENT", "StatusCode.DEADLINE_EXCEEDED", None):
        assert policy.next_delay_s(error(status), 0, elapsed_s=0) is None


def test_the_token_and_the_pinned_version_go_with_every_call(connect, fake_triton):
    fake, url = fake_triton
    with connect(url, token="t0ken-of-sixteen-chars", model_version=3) as client:
        client.score([record("a")])
    assert fake.headers[-1][contract.GRPC_TOKEN_HEADER] == "t0ken-of-sixteen-chars"
    assert fake.requests[-1].model_version == "3"


def test_a_refused_token_raises_authentication_error_at_once(connect, fake_triton):
    fake, url = fake_triton
    fake.fail_with = [grpc.StatusCode.UNAVAILABLE] * 10
    fake.fail_message = "This protocol is restricted, expecting header 'triton-grpc-protocol-x'"
    with (
        connect(url, retry_deadline_s=30, backoff_s=0) as client,
        pytest.raises(AuthenticationError, match="authentication failed"),
    ):
        client.score([record("a")])
    assert len(fake.requests) == 1


def test_a_request_the_server_shed_from_its_queue_is_retried(connect, fake_triton):
    fake, url = fake_triton
    fake.fail_with = [grpc.StatusCode.UNAVAILABLE]
    fake.fail_message = "Request timeout expired"  # long before the client's own timeout
    with connect(url, timeout_s=30, retry_deadline_s=5, backoff_s=0) as client:
        assert [s.id for s in client.score([record("a")])] == ["a"]
    assert len(fake.requests) == 2


def test_the_default_retry_budget_outlasts_a_server_restart():
    with UbmClient() as client:
        assert client._retry.deadline_s >= 30


def test_score_iter_yields_in_input_order_with_requests_in_flight_together(connect, fake_triton):
    fake, url = fake_triton
    fake.delay_s = 0.05
    records = [record(f"u{i}", n_events=i % 5 + 1) for i in range(20)]
    with connect(url, batch_size=2) as client:
        scores = list(client.score_iter(records, max_in_flight=4))
    assert [s.id for s in scores] == [f"u{i}" for i in range(20)]
    assert [s.purchase_probability for s in scores] == pytest.approx(
        [(i % 5 + 1) / 10 for i in range(20)]
    )
    assert len(fake.requests) == 10
    assert 2 <= fake.max_in_flight <= 4


def test_score_iter_reads_lazily_and_holds_at_most_max_in_flight_batches(fake_triton):
    _, url = fake_triton
    pulled = 0

    def unbounded():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield record(f"u{i}")

    with UbmClient(url, batch_size=3) as client:
        scores = client.score_iter(unbounded(), max_in_flight=2)
        for i in range(30):
            assert next(scores).id == f"u{i}"
            # this score's batch, and the next batch in flight
            assert pulled <= (i // 3 + 2) * 3
        scores.close()


def test_score_iter_reports_an_invalid_record_by_its_index_after_the_earlier_scores(
    connect, fake_triton
):
    _, url = fake_triton
    records = [record("a"), record("b"), record("c"), {"id": "bad", "events": []}, record("e")]
    seen = []
    with connect(url, batch_size=2) as client:
        if isinstance(client, UbmClient):
            with pytest.raises(InvalidRecordError, match="record 3: events must not be empty"):
                seen.extend(s.id for s in client.score_iter(records))
            assert seen == ["a", "b"]
        else:
            with pytest.raises(InvalidRecordError, match="record 3: events must not be empty"):
                client.score_iter(records)


def test_score_iter_refuses_max_in_flight_below_one(connect, unused_url):
    with connect(unused_url) as client, pytest.raises(ValueError, match="max_in_flight"):
        client.score_iter([record("a")], max_in_flight=0)


def test_calls_go_round_robin_over_several_endpoints(connect):
    with serve_fake() as (first, url1), serve_fake() as (second, url2):
        with connect(f"{url1}, {url2}", batch_size=1) as client:
            client.score([record(f"u{i}") for i in range(6)])
        assert len(first.requests) == len(second.requests) == 3


def test_an_unavailable_endpoint_is_skipped_during_its_cooldown(connect, fake_triton, unused_url):
    fake, url = fake_triton
    with connect(f"{unused_url},{url}", batch_size=1, backoff_s=0, cooldown_s=60) as client:
        scores = client.score([record(f"u{i}") for i in range(6)])
    assert [s.id for s in scores] == [f"u{i}" for i in range(6)]
    assert len(fake.requests) == 6


def test_headers_are_sent_with_every_call(connect, fake_triton):
    fake, url = fake_triton
    with connect(url, batch_size=1, headers={"authorization": "Bearer t0ken"}) as client:
        client.score([record("a"), record("b")])
    assert [h["authorization"] for h in fake.headers] == ["Bearer t0ken"] * 2


@pytest.mark.parametrize("module", ["ubm.client", "ubm.async_client"])
def test_tls_settings_reach_tritonclient(monkeypatch, tmp_path, module):
    created = []
    monkeypatch.setattr(
        f"{module}.InferenceServerClient", lambda url, **kwargs: created.append((url, kwargs))
    )
    client_class = UbmClient if module == "ubm.client" else AsyncUbmClient
    tls = TlsConfig(
        root_certificates=tmp_path / "ca.pem",
        private_key=tmp_path / "key.pem",
        certificate_chain=tmp_path / "cert.pem",
    )
    client_class("a:1,b:2", tls=tls)
    client_class("c:3", tls=TlsConfig())
    client_class("d:4")
    assert [url for url, _ in created] == ["a:1", "b:2", "c:3", "d:4"]
    assert {k: v for k, v in created[0][1].items() if k != "channel_args"} == {
        "ssl": True,
        "root_certificates": str(tmp_path / "ca.pem"),
        "private_key": str(tmp_path / "key.pem"),
        "certificate_chain": str(tmp_path / "cert.pem"),
    }
    assert created[2][1]["ssl"] is True and created[2][1]["root_certificates"] is None
    assert "ssl" not in created[3][1]
    assert ("grpc.max_reconnect_backoff_ms", 1000) in created[3][1]["channel_args"]


def test_a_client_certificate_needs_its_key():
    with pytest.raises(ValueError, match="both"):
        TlsConfig(certificate_chain=Path("cert.pem"))


@pytest.mark.parametrize("url", ["", "a:1,", " , b:2"])
def test_an_empty_address_is_refused(url):
    with pytest.raises(ValueError, match="HOST:PORT"):
        UbmClient(url)


def test_config_is_the_model_config(connect, fake_triton):
    _, url = fake_triton
    with connect(url) as client:
        assert client.config() == {"name": "ubm", "max_batch_size": 256}


@pytest.mark.parametrize(
    "url", ["127.0.0.1:99999", "127.0.0.1:0", "host", "::1:8001", "h:80a", "a:1,b"]
)
def test_an_address_without_a_valid_port_is_refused(url):
    with pytest.raises(ValueError, match=r"HOST:PORT|port|brackets"):
        UbmClient(url)


def test_model_not_found_is_retried_once_the_model_has_answered(connect, fake_triton):
    """A graceful restart or rollout: Triton answers NOT_FOUND while the model is unloaded."""
    fake, url = fake_triton
    with connect(url, retry_deadline_s=5, backoff_s=0) as client:
        client.score([record("a")])
        fake.fail_with = [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND]
        assert [s.id for s in client.score([record("b")])] == ["b"]
    assert len(fake.requests) == 4


def test_model_not_found_fails_at_once_when_the_model_never_answered(connect, fake_triton):
    fake, url = fake_triton
    fake.fail_with = [grpc.StatusCode.NOT_FOUND] * 10
    with (
        connect(url, retry_deadline_s=5, backoff_s=0) as client,
        pytest.raises(ModelNotReadyError),
    ):
        client.score([record("a")])
    assert len(fake.requests) == 1


def test_inference_carries_the_client_timeout_to_the_server(connect, fake_triton):
    fake, url = fake_triton
    with connect(url, timeout_s=2.5) as client:
        client.score([record("a")])
    assert fake.requests[0].parameters["timeout"].int64_param == 2_500_000


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"ts": 10**30}, "events[0].ts"),
        ({"ts": T0 * 1000}, "events[0].ts"),
        ({"item": "\ud800"}, "events[0].item"),
    ],
)
def test_records_json_cannot_carry_are_invalid_record_errors(connect, fake_triton, event, field):
    fake, url = fake_triton
    bad = {"id": "x", "events": [{**record("x")["events"][0], **event}]}
    with connect(url) as client, pytest.raises(InvalidRecordError, match=r"record 1: ") as info:
        client.score([record("a"), bad])
    assert field in str(info.value) and info.value.index == 1
    assert fake.requests == []


def test_a_hand_made_record_json_cannot_carry_is_an_invalid_record_error(connect, fake_triton):
    _, url = fake_triton
    hand_made = Record(id="h", events=(Event(ts=10**30, type="view", item="1"),))
    with connect(url) as client, pytest.raises(InvalidRecordError, match="record 0: "):
        client.score_batch([hand_made])


def test_a_request_that_outwaited_its_timeout_in_a_server_queue_is_not_retried():
    policy = RetryPolicy(deadline_s=10, backoff_s=0.1, max_backoff_s=1)
    expired = InferenceServerException(
        "in ensemble 'ubm', Request timeout expired", status="StatusCode.UNAVAILABLE"
    )
    assert policy.next_delay_s(expired, 0, elapsed_s=0, model_was_served=True) is None


@pytest.mark.parametrize(
    "url",
    ["a:1,dns:///ubm-headless.ml.svc:8001", "dns://10.0.0.10/b:2", "dns://[::1]:53/c:3,dns:d:4"],
)
def test_dns_targets_are_accepted_and_balanced_round_robin(url):
    assert parse_urls(url) == url.split(",")
    assert ("grpc.lb_policy_name", "round_robin") in channel_options(None)["channel_args"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("dns:///ubm-headless:", "port"),  # gRPC would default to 443
        ("dns:///ubm-headless", "HOST:PORT"),
        ("dns://10.0.0.10", "DNS_SERVER/NAME:PORT"),
        ("ipv4:127.0.0.1:1,127.0.0.2:1", "only dns:"),
        ("http://a:1", "not a URL"),
    ],
)
def test_malformed_targets_are_refused(url, message):
    with pytest.raises(ValueError, match=message):
        parse_urls(url)
