"""UbmClient without tritonserver: an in-process gRPC fake of Triton's inference service."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from ubm import (
    InvalidRecordError,
    InvalidRequestError,
    ModelNotReadyError,
    RequestTimeoutError,
    Score,
    ServerError,
    ServerUnavailableError,
    UbmClient,
    contract,
    parse_record,
)
from ubm._base import RetryPolicy
from ubm.exceptions import from_triton_error

HIDDEN = 4


def record(record_id: str, n_events: int = 1) -> dict:
    events = [{"ts": 100 - i, "type": "view", "item": f"i{i}"} for i in range(n_events)]
    return {"id": record_id, "events": events}


class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers like the ubm ensemble: probability = events / 10, embedding = row index."""

    def __init__(self) -> None:
        self.requests: list[service_pb2.ModelInferRequest] = []
        self.fail_with: list[grpc.StatusCode] = []
        """Status codes to abort the next infer calls with, one per call."""
        self.reject_ids: set[str] = set()
        self.model_ready = True
        self.delay_s = 0.0

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=self.model_ready)

    def ModelMetadata(self, request, context):
        return service_pb2.ModelMetadataResponse(
            name=request.name, versions=["1"], platform="ensemble"
        )

    def ModelInfer(self, request, context):
        self.requests.append(request)
        time.sleep(self.delay_s)
        if self.fail_with:
            context.abort(self.fail_with.pop(0), "injected failure")
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


@pytest.fixture
def fake_triton() -> Iterator[tuple[FakeTriton, str]]:
    fake = FakeTriton()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture
def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_score_returns_scores_in_input_order_in_batches_of_batch_size(fake_triton):
    fake, url = fake_triton
    records = [record(f"u{i}", n_events=i + 1) for i in range(5)]
    with UbmClient(url, batch_size=2) as client:
        scores = client.score(records)
    assert [s.id for s in scores] == ["u0", "u1", "u2", "u3", "u4"]
    assert [s.purchase_probability for s in scores] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert all(s.embedding is None for s in scores)
    assert [len(r.raw_input_contents) for r in fake.requests] == [1, 1, 1]
    assert [len(fake.sent_rows(i)) for i in range(3)] == [2, 2, 1]
    assert [o.name for o in fake.requests[0].outputs] == [contract.PURCHASE_PROBABILITY]
    assert list(fake.requests[0].inputs[0].shape) == [2, 1]


def test_score_with_embedding_requests_and_returns_it(fake_triton):
    fake, url = fake_triton
    with UbmClient(url) as client:
        scores = client.score([record("a"), record("b")], embedding=True)
    assert {o.name for o in fake.requests[0].outputs} == {
        contract.PURCHASE_PROBABILITY,
        contract.EMBEDDING,
    }
    assert scores[1] == Score(id="b", purchase_probability=pytest.approx(0.1), embedding=(1.0,) * 4)
    assert scores[1].to_dict()["embedding"] == [1.0] * HIDDEN


def test_score_sends_the_validated_record(fake_triton):
    fake, url = fake_triton
    raw = {"id": 7, "extra": "dropped", "events": record("x", n_events=3)["events"]}
    with UbmClient(url) as client:
        client.score([raw, parse_record(record("parsed"))])
    sent = fake.sent_rows(0)
    assert sent[0]["id"] == "7" and "extra" not in sent[0]
    assert [e["ts"] for e in sent[0]["events"]] == [98, 99, 100]
    assert sent[1]["id"] == "parsed"


def test_invalid_record_is_reported_with_its_index_and_nothing_is_sent(fake_triton):
    fake, url = fake_triton
    with UbmClient(url) as client, pytest.raises(InvalidRecordError) as info:
        client.score([record("ok"), {"id": "bad", "events": []}])
    assert info.value.index == 1
    assert str(info.value) == "record 1: events must not be empty"
    assert fake.requests == []


def test_invalid_argument_from_the_server_is_not_retried(fake_triton):
    fake, url = fake_triton
    fake.reject_ids = {"b"}
    with (
        UbmClient(url, backoff_s=0) as client,
        pytest.raises(InvalidRequestError, match="record 1"),
    ):
        client.score([record("a"), record("b")])
    assert len(fake.requests) == 1


def test_unavailable_is_retried_until_the_server_answers(fake_triton):
    fake, url = fake_triton
    fake.fail_with = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED]
    with UbmClient(url, max_retries=2, backoff_s=0) as client:
        assert [s.id for s in client.score([record("a")])] == ["a"]
    assert len(fake.requests) == 3


def test_gives_up_after_max_retries(fake_triton):
    fake, url = fake_triton
    fake.fail_with = [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    with (
        UbmClient(url, max_retries=2, backoff_s=0) as client,
        pytest.raises(ServerUnavailableError, match="injected failure") as info,
    ):
        client.score([record("a")])
    assert isinstance(info.value.__cause__, InferenceServerException)
    assert len(fake.requests) == 3


def test_a_slow_server_raises_request_timeout(fake_triton):
    fake, url = fake_triton
    fake.delay_s = 0.5
    with UbmClient(url, timeout_s=0.05) as client, pytest.raises(RequestTimeoutError):
        client.score([record("a")])
    assert len(fake.requests) == 1


def test_unreachable_server_raises_server_unavailable_quickly(unused_url):
    started = time.monotonic()
    with UbmClient(unused_url, max_retries=1, backoff_s=0.01) as client:
        with pytest.raises(ServerUnavailableError):
            client.score([record("a")])
        assert client.is_ready() is False
    assert time.monotonic() - started < 5


def test_is_ready_needs_the_model_ready_too(fake_triton):
    fake, url = fake_triton
    with UbmClient(url) as client:
        assert client.is_ready() is True
        fake.model_ready = False
        assert client.is_ready() is False


def test_metadata_is_a_json_dict(fake_triton):
    _, url = fake_triton
    with UbmClient(url) as client:
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
        {"max_retries": -1},
        {"backoff_s": -0.1},
    ],
)
def test_settings_out_of_range_raise_value_error(settings):
    with pytest.raises(ValueError):
        UbmClient(**settings)


def test_score_batch_refuses_an_empty_or_oversized_batch(unused_url):
    one = parse_record(record("a"))
    with UbmClient(unused_url) as client:
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
    policy = RetryPolicy(max_retries=10, backoff_s=0.2, max_backoff_s=1.0)
    rng = random.Random(0)
    for attempt, cap in enumerate([0.2, 0.4, 0.8, 1.0, 1.0]):
        delays = [policy.delay_s(attempt, rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= cap
        assert max(delays) > 0.9 * cap


def test_only_unavailable_and_resource_exhausted_are_retried_and_only_max_retries_times():
    policy = RetryPolicy(max_retries=2, backoff_s=0, max_backoff_s=0)

    def error(status: str) -> InferenceServerException:
        return InferenceServerException("x", status=status)

    assert policy.should_retry(error("StatusCode.UNAVAILABLE"), 1)
    assert policy.should_retry(error("StatusCode.RESOURCE_EXHAUSTED"), 0)
    assert not policy.should_retry(error("StatusCode.UNAVAILABLE"), 2)
    for status in ("StatusCode.INVALID_ARGUMENT", "StatusCode.DEADLINE_EXCEEDED", None):
        assert not policy.should_retry(error(status), 0)
