"""`UbmClient`: the synchronous client for the ubm ensemble served by Triton over gRPC."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from tritonclient.grpc import InferenceServerClient
from tritonclient.utils import InferenceServerException

from ubm import contract
from ubm._base import (
    RetryPolicy,
    Score,
    build_inputs,
    check_batch,
    parse_scores,
    requested_outputs,
    validate_records,
)
from ubm.exceptions import from_triton_error
from ubm.records import Record

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF_S = 0.2
DEFAULT_MAX_BACKOFF_S = 5.0
DEFAULT_BATCH_SIZE = 64

_T = TypeVar("_T")


class UbmClient:
    """Scores behaviour records with the ``ubm`` ensemble; one gRPC channel for all calls.

    Use it as a context manager, or call `close` when done::

        with UbmClient("localhost:8001") as client:
            scores = client.score([{"id": "u1", "events": [...]}])

    Args:
        url: the server's gRPC address, ``host:port``.
        model: the model to call.
        timeout_s: the limit for each call to the server, per attempt.
        max_retries: retries of a call that failed because the server was unreachable or
            overloaded (UNAVAILABLE, RESOURCE_EXHAUSTED); 0 disables retrying.
        backoff_s: the delay cap before the first retry; it doubles for each further retry and
            the actual delay is drawn uniformly below it (full jitter).
        max_backoff_s: the largest delay cap.
        batch_size: records per request in `score`, at most ``contract.MAX_BATCH_SIZE``.

    Raises:
        ValueError: a setting is out of range.
    """

    def __init__(
        self,
        url: str = contract.DEFAULT_URL,
        *,
        model: str = contract.ENSEMBLE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if not 1 <= batch_size <= contract.MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1 to {contract.MAX_BATCH_SIZE}, got {batch_size}")
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        self._retry = RetryPolicy(
            max_retries=max_retries, backoff_s=backoff_s, max_backoff_s=max_backoff_s
        )
        # Creating the channel does not connect; the first call does.
        self._triton = InferenceServerClient(url)
        self._closed = False

    def __enter__(self) -> UbmClient:
        self._check_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel. Further calls raise RuntimeError; closing again does nothing."""
        if not self._closed:
            self._closed = True
            self._triton.close()

    def score(
        self, records: Iterable[Mapping[str, Any] | Record], *, embedding: bool = False
    ) -> list[Score]:
        """Validate and score records, ``batch_size`` per request.

        Every record is validated before the first request is sent.

        Args:
            records: decoded JSON records (see `ubm.records`) or parsed `Record` objects.
            embedding: also return each user's embedding.

        Returns:
            One `Score` per record, in input order.

        Raises:
            InvalidRecordError: a record does not follow the schema; nothing was sent.
            TransportError: the server was unreachable after the retries, or timed out.
            ServerError: the server answered with an error.
        """
        parsed = validate_records(records)
        scores: list[Score] = []
        for start in range(0, len(parsed), self.batch_size):
            batch = parsed[start : start + self.batch_size]
            scores.extend(self.score_batch(batch, embedding=embedding))
        return scores

    def score_batch(self, records: Sequence[Record], *, embedding: bool = False) -> list[Score]:
        """Score already-validated records in exactly one request (retries aside).

        Args:
            records: 1 to ``contract.MAX_BATCH_SIZE`` records, from `ubm.records.parse_record`.
            embedding: also return each user's embedding.

        Returns:
            One `Score` per record, in input order.

        Raises:
            ValueError: the batch is empty or too large.
            InvalidRequestError: the server rejected the batch (it names the record).
            TransportError: the server was unreachable after the retries, or timed out.
            ServerError: any other error answer from the server.
        """
        check_batch(records)
        inputs = build_inputs(records)
        outputs = requested_outputs(embedding=embedding)
        result = self._call(
            lambda: self._triton.infer(
                self.model, inputs, outputs=outputs, client_timeout=self.timeout_s
            )
        )
        return parse_scores(result, records, embedding=embedding)

    def is_ready(self) -> bool:
        """Whether the server and the model are both ready; a single try, no retries.

        Returns:
            True when both are ready; False when not, or when the server cannot be reached.
        """
        self._check_open()
        try:
            return self._triton.is_server_ready(
                client_timeout=self.timeout_s
            ) and self._triton.is_model_ready(self.model, client_timeout=self.timeout_s)
        except InferenceServerException:
            return False

    def metadata(self) -> dict[str, Any]:
        """The model's metadata: name, versions, platform, input and output tensors.

        Returns:
            Triton's model metadata as a JSON dict.

        Raises:
            ModelNotReadyError: the server does not know the model.
            TransportError: the server was unreachable after the retries, or timed out.
        """
        return self._call(
            lambda: self._triton.get_model_metadata(
                self.model, as_json=True, client_timeout=self.timeout_s
            )
        )

    def _call(self, rpc: Callable[[], _T]) -> _T:
        """Run one tritonclient call, retrying as the policy says and translating its errors."""
        self._check_open()
        attempt = 0
        while True:
            try:
                return rpc()
            except InferenceServerException as e:
                if not self._retry.should_retry(e, attempt):
                    raise from_triton_error(e) from e
                time.sleep(self._retry.delay_s(attempt))
                attempt += 1

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed; create a new UbmClient")
