"""The I/O-free half of the clients: validation, request building, result parsing, retry policy.

Both the sync `UbmClient` and its asyncio twin `AsyncUbmClient` sit on these functions and add
only the calls to Triton and the sleeping between retries.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from tritonclient.grpc import InferInput, InferRequestedOutput, InferResult
from tritonclient.utils import InferenceServerException

from ubm import _security, contract
from ubm.exceptions import (
    QUEUE_TIMEOUT_MESSAGE,
    AuthenticationError,
    InvalidRecordError,
    ServerError,
    ServerUnavailableError,
    TlsError,
    UbmError,
    from_triton_error,
)
from ubm.records import Record, RecordError, parse_record
from ubm.scores import Score

RETRYABLE_STATUSES = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED"})
"""gRPC statuses worth retrying: connection failures (gRPC reports them as UNAVAILABLE) and a
full server queue."""
MODEL_GONE_STATUS = "StatusCode.NOT_FOUND"
"""Triton's answer while a server that served the model shuts down gracefully or swaps versions
("Request for unknown model: 'ubm' has no available versions"). Retried only once the model has
answered through the client, so that a wrong model name still fails at once."""


def is_retryable(
    error: InferenceServerException, *, model_was_served: bool, shed: bool = False
) -> bool:
    """Whether ``error`` may go away by itself: see `RETRYABLE_STATUSES`, `MODEL_GONE_STATUS`.

    A request that outwaited its timeout in a server queue is retried only when the server
    `shed` it, i.e. its queue policy's timeout is shorter than the client's and the client
    still waits (overload); otherwise the client's own timeout has passed, as with
    DEADLINE_EXCEEDED. Refused tokens and failed TLS handshakes are never retried.
    """
    if QUEUE_TIMEOUT_MESSAGE in (error.message() or ""):
        return shed
    if _security.token_refused(error) or _security.handshake_failed(error):
        return False
    status = error.status()
    return status in RETRYABLE_STATUSES or (model_was_served and status == MODEL_GONE_STATUS)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, for the errors that `is_retryable` accepts.

    A call is retried until ``deadline_s`` seconds have passed since its first attempt, so the
    budget is a duration (long enough to ride out a server restart), not a number of tries.

    Attributes:
        deadline_s: how long after the first attempt a retry may still start; 0 disables
            retrying.
        backoff_s: the delay cap before the first retry; it doubles for each further retry.
        max_backoff_s: the largest delay cap.
    """

    deadline_s: float
    backoff_s: float
    max_backoff_s: float

    def __post_init__(self) -> None:
        if self.deadline_s < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"retry settings must not be negative: {self}")

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed try ``attempt`` (0-based): uniform in [0, cap]."""
        cap = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return (rng or random).uniform(0.0, cap)

    def next_delay_s(
        self,
        error: InferenceServerException,
        attempt: int,
        elapsed_s: float,
        rng: random.Random | None = None,
        *,
        model_was_served: bool = False,
        shed: bool = False,
    ) -> float | None:
        """How long to wait before retrying a call, or None to give up.

        Args:
            error: what try ``attempt`` (0-based) raised.
            attempt: the number of tries so far, minus one.
            elapsed_s: seconds since the first try started.
            rng: the jitter's random source.
            model_was_served: the model has answered through this client before.
            shed: the server's queue dropped the request before the client's timeout.

        Returns:
            The delay in seconds; None when ``error`` is not retryable or the retry would start
            after the deadline.
        """
        if not is_retryable(error, model_was_served=model_was_served, shed=shed):
            return None
        delay = self.delay_s(attempt, rng)
        return delay if elapsed_s + delay <= self.deadline_s else None


def validate_records(
    records: Iterable[Mapping[str, Any] | Record], *, start: int = 0
) -> list[Record]:
    """Parse decoded JSON records; `Record` objects pass through unchanged.

    Args:
        records: decoded JSON records or `Record` objects.
        start: the index of the first record in the caller's whole input, for error messages.

    Raises:
        InvalidRecordError: the first invalid record, with its index.
    """
    parsed = []
    for index, record in enumerate(records, start=start):
        try:
            parsed.append(record if isinstance(record, Record) else parse_record(record))
        except RecordError as e:
            raise InvalidRecordError(index, e) from e
    return parsed


def check_timeout(timeout_s: float) -> None:
    """Raise ValueError unless ``timeout_s`` is positive."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")


def check_batch_size(batch_size: int) -> None:
    """Raise ValueError unless ``batch_size`` records fit in one request."""
    if not 1 <= batch_size <= contract.MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be 1 to {contract.MAX_BATCH_SIZE}, got {batch_size}")


def check_batch(records: Sequence[Record]) -> None:
    """Raise ValueError unless one request can carry ``records``."""
    if not 1 <= len(records) <= contract.MAX_BATCH_SIZE:
        raise ValueError(
            f"a batch holds 1 to {contract.MAX_BATCH_SIZE} records, got {len(records)}"
        )


def build_inputs(records: Sequence[Record]) -> list[InferInput]:
    """The ensemble's inputs: one UTF-8 JSON document per row of a BYTES [n, 1] tensor.

    Raises:
        InvalidRecordError: a `Record` built by hand holds what JSON cannot carry (an integer
            beyond 64 bits, a lone surrogate).
    """
    # orjson serialises the (slotted) dataclasses directly, i.e. the validated, sorted record.
    rows = np.array([_dumps(index, record) for index, record in enumerate(records)], np.object_)
    records_input = InferInput(contract.RECORDS, [len(records), 1], "BYTES")
    records_input.set_data_from_numpy(rows.reshape(-1, 1))
    return [records_input]


def _dumps(index: int, record: Record) -> bytes:
    try:
        return orjson.dumps(record)
    except TypeError as e:  # orjson.JSONEncodeError
        raise InvalidRecordError(
            index, RecordError(f"cannot be sent as JSON: {e}", field="json")
        ) from e


def request_timeout_us(timeout_s: float) -> int:
    """The client's per-attempt timeout as Triton's request timeout, in microseconds.

    Sent with each inference, it tells the server how long the client waits, so that models
    whose queue policy allows it drop a request nobody waits for any more.
    """
    return max(1, round(timeout_s * 1_000_000))


def _output_names(*, embedding: bool, segment: bool) -> tuple[str, ...]:
    # Only the outputs the caller uses: the embedding is much larger than the score.
    names = [contract.PURCHASE_PROBABILITY]
    if embedding:
        names.append(contract.EMBEDDING)
    if segment:
        names += [contract.SEGMENT, contract.SEGMENT_DISTANCE]
    return tuple(names)


def requested_outputs(*, embedding: bool, segment: bool = False) -> list[InferRequestedOutput]:
    """The outputs to ask for: the probability, plus the embedding when ``embedding`` and the
    segment and its distance when ``segment``."""
    return [
        InferRequestedOutput(name) for name in _output_names(embedding=embedding, segment=segment)
    ]


def parse_scores(
    result: InferResult, records: Sequence[Record], *, embedding: bool, segment: bool = False
) -> list[Score]:
    """Turn one inference result into a `Score` per record, in request order.

    Raises:
        ServerError: an output is missing or does not hold one row per record.
    """
    names = _output_names(embedding=embedding, segment=segment)
    arrays = {name: result.as_numpy(name) for name in names}
    for name, array in arrays.items():
        if array is None or len(array) != len(records):
            raise ServerError(f"output {name!r} does not hold one row per record ({len(records)})")
    probabilities = arrays[contract.PURCHASE_PROBABILITY]
    embeddings = arrays.get(contract.EMBEDDING)
    segments = arrays.get(contract.SEGMENT)
    distances = arrays.get(contract.SEGMENT_DISTANCE)
    return [
        Score(
            id=record.id,
            purchase_probability=float(probabilities[i, 0]),
            embedding=None if embeddings is None else tuple(embeddings[i].tolist()),
            segment=None if segments is None else int(segments[i, 0]),
            segment_distance=None if distances is None else float(distances[i, 0]),
        )
        for i, record in enumerate(records)
    ]


SHED_FRACTION = 0.9
"""A queue timeout within this share of the client's timeout was the server's own limit."""


def was_shed(error: InferenceServerException, attempt_s: float, timeout_s: float) -> bool:
    """Whether a server queue dropped the request (its policy) while the client still waited."""
    return (
        QUEUE_TIMEOUT_MESSAGE in (error.message() or "") and attempt_s < timeout_s * SHED_FRACTION
    )


def call_headers(headers: Mapping[str, str] | None, token: str | None) -> dict[str, str]:
    """The metadata of every call: the caller's ``headers`` plus the token's header."""
    merged = dict(headers or {})
    if token is not None:
        merged[contract.GRPC_TOKEN_HEADER] = token
    return merged


def translate_error(
    error: InferenceServerException, url: str, *, shed: bool = False, tls_reason: str | None = None
) -> UbmError:
    """The `UbmError` to raise for a call that failed for good at `url`.

    Args:
        error: what tritonclient raised.
        url: the endpoint, for the message.
        shed: the server's queue dropped the request (overload, not the client's timeout).
        tls_reason: what `_security.diagnose_closed_connection` found, if anything.
    """
    if _security.token_refused(error):
        return AuthenticationError(_security.authentication_message(url))
    if _security.handshake_failed(error):
        return TlsError(_security.handshake_message(url, error))
    if tls_reason is not None:
        return TlsError(tls_reason)
    if shed:
        return ServerUnavailableError(f"the server stayed overloaded: {error.message()}")
    return from_triton_error(error)
