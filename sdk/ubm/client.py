"""`UbmClient`: the synchronous client for the ubm ensemble served by Triton over gRPC."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from typing import Any, TypeVar

from tritonclient.grpc import InferenceServerClient
from tritonclient.utils import InferenceServerException

from ubm import _security, contract
from ubm._base import (
    RetryPolicy,
    build_inputs,
    call_headers,
    check_batch,
    check_batch_size,
    check_timeout,
    parse_scores,
    request_timeout_us,
    requested_outputs,
    translate_error,
    validate_records,
    was_shed,
)
from ubm._concurrency import chunked, map_ordered
from ubm._endpoints import Endpoint, EndpointPool, parse_urls
from ubm.config import (
    DEFAULT_BACKOFF_S,
    DEFAULT_BATCH_SIZE,
    DEFAULT_COOLDOWN_S,
    DEFAULT_MAX_BACKOFF_S,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_RETRY_DEADLINE_S,
    DEFAULT_TIMEOUT_S,
    TlsConfig,
    channel_options,
)
from ubm.records import Record
from ubm.scores import Score

_T = TypeVar("_T")


class UbmClient:
    """Scores behaviour records with the ``ubm`` ensemble; one gRPC channel per endpoint.

    Use it as a context manager, or call `close` when done::

        with UbmClient("localhost:8001") as client:
            scores = client.score([{"id": "u1", "events": [...]}])

    The client may be shared between threads.

    Args:
        url: the server's gRPC address, ``host:port``, or several separated by commas; calls go
            round robin to the endpoints that have not answered UNAVAILABLE lately.
        model: the model to call.
        timeout_s: the limit for each call to the server, per attempt.
        retry_deadline_s: how long after its first attempt a call that failed because the
            server was unreachable or overloaded (UNAVAILABLE, RESOURCE_EXHAUSTED) is still
            retried; 0 disables retrying.
        backoff_s: the delay cap before the first retry; it doubles for each further retry and
            the actual delay is drawn uniformly below it (full jitter).
        max_backoff_s: the largest delay cap.
        batch_size: records per request in `score` and `score_iter`, at most
            ``contract.MAX_BATCH_SIZE``.
        cooldown_s: how long an endpoint that answered UNAVAILABLE is skipped.
        tls: TLS settings; None (the default) uses a plaintext channel.
        headers: gRPC metadata sent with every call, e.g. ``{"authorization": "Bearer ..."}``.
        token: the server's client token (``ubm-build serve --token-file``), sent with every
            call; a missing or wrong one raises `AuthenticationError` at once.
        model_version: the model version to call, e.g. ``"3"``; None (the default) calls the
            version the server serves, which a rollout changes without dropping a request.

    Raises:
        ValueError: a setting is out of range.
    """

    def __init__(
        self,
        url: str = contract.DEFAULT_URL,
        *,
        model: str = contract.ENSEMBLE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        tls: TlsConfig | None = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        model_version: str | int | None = None,
    ) -> None:
        check_timeout(timeout_s)
        check_batch_size(batch_size)
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        self._retry = RetryPolicy(
            deadline_s=retry_deadline_s, backoff_s=backoff_s, max_backoff_s=max_backoff_s
        )
        self.model_version = "" if model_version is None else str(model_version)
        self._headers = call_headers(headers, token)
        self._tls = tls
        options = channel_options(tls)
        # Creating a channel does not connect; the first call does.
        self._endpoints = EndpointPool(
            parse_urls(url), lambda u: InferenceServerClient(u, **options), cooldown_s
        )
        self._closed = False

    def __enter__(self) -> UbmClient:
        self._check_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels. Further calls raise RuntimeError; closing again does nothing."""
        if not self._closed:
            self._closed = True
            for endpoint in self._endpoints:
                endpoint.client.close()

    def score(
        self,
        records: Iterable[Mapping[str, Any] | Record],
        *,
        embedding: bool = False,
        segment: bool = False,
    ) -> list[Score]:
        """Validate and score records, ``batch_size`` per request, one request at a time.

        Every record is validated before the first request is sent.

        Args:
            records: decoded JSON records (see `ubm.records`) or parsed `Record` objects.
            embedding: also return each user's embedding.
            segment: also return each user's segment and distance to its centroid.

        Returns:
            One `Score` per record, in input order.

        Raises:
            InvalidRecordError: a record does not follow the schema; nothing was sent.
            TransportError: the server was unreachable after the retries, or timed out.
            ServerError: the server answered with an error.
        """
        parsed = validate_records(records)
        scores: list[Score] = []
        for batch in chunked(parsed, self.batch_size):
            scores.extend(self.score_batch(batch, embedding=embedding, segment=segment))
        return scores

    def score_iter(
        self,
        records: Iterable[Mapping[str, Any] | Record],
        *,
        embedding: bool = False,
        segment: bool = False,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> Iterator[Score]:
        """Score a stream of records, ``batch_size`` per request, several requests at a time.

        Records are read lazily and at most ``max_in_flight`` batches are held at once, so
        memory stays constant however long ``records`` is. Each batch is validated just before
        it is sent.

        Args:
            records: decoded JSON records or `Record` objects; any iterable, even unbounded.
            embedding: also return each user's embedding.
            segment: also return each user's segment and distance to its centroid.
            max_in_flight: requests in flight at once (one thread each).

        Returns:
            An iterator of one `Score` per record, in input order.

        Raises:
            ValueError: ``max_in_flight`` is below 1 (raised at once).
            InvalidRecordError: a record does not follow the schema (raised in order, after the
                scores of the batches before its own).
            TransportError: the server was unreachable after the retries, or timed out.
            ServerError: the server answered with an error.
        """
        batches = map_ordered(
            lambda numbered: self._score_chunk(*numbered, embedding, segment),
            enumerate(chunked(records, self.batch_size)),
            max_in_flight,
        )
        return _flatten(batches)

    def _score_chunk(
        self, index: int, chunk: list[Mapping[str, Any] | Record], embedding: bool, segment: bool
    ) -> list[Score]:
        parsed = validate_records(chunk, start=index * self.batch_size)
        return self.score_batch(parsed, embedding=embedding, segment=segment)

    def score_batch(
        self, records: Sequence[Record], *, embedding: bool = False, segment: bool = False
    ) -> list[Score]:
        """Score already-validated records in exactly one request (retries aside).

        Args:
            records: 1 to ``contract.MAX_BATCH_SIZE`` records, from `ubm.records.parse_record`.
            embedding: also return each user's embedding.
            segment: also return each user's segment and distance to its centroid.

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
        outputs = requested_outputs(embedding=embedding, segment=segment)
        result = self._call(
            lambda triton: triton.infer(
                self.model,
                inputs,
                model_version=self.model_version,
                outputs=outputs,
                timeout=request_timeout_us(self.timeout_s),
                client_timeout=self.timeout_s,
                headers=self._headers,
            )
        )
        return parse_scores(result, records, embedding=embedding, segment=segment)

    def is_ready(self) -> bool:
        """Whether the server and the model are ready at some endpoint; one try each, no retries.

        Returns:
            True when both are ready at one endpoint at least; False when not, or when no
            server can be reached.
        """
        self._check_open()
        return any(self._endpoint_ready(endpoint.client) for endpoint in self._endpoints)

    def _endpoint_ready(self, triton: InferenceServerClient) -> bool:
        try:
            return triton.is_server_ready(
                headers=self._headers, client_timeout=self.timeout_s
            ) and triton.is_model_ready(
                self.model,
                self.model_version,
                headers=self._headers,
                client_timeout=self.timeout_s,
            )
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
            lambda triton: triton.get_model_metadata(
                self.model,
                self.model_version,
                headers=self._headers,
                as_json=True,
                client_timeout=self.timeout_s,
            )
        )

    def config(self) -> dict[str, Any]:
        """The model's configuration as the server loaded it (Triton's ``ModelConfig``).

        Returns:
            The configuration as a JSON dict.

        Raises:
            ModelNotReadyError: the server does not know the model.
            TransportError: the server was unreachable after the retries, or timed out.
        """
        response = self._call(
            lambda triton: triton.get_model_config(
                self.model,
                self.model_version,
                headers=self._headers,
                as_json=True,
                client_timeout=self.timeout_s,
            )
        )
        return response["config"]

    def _call(self, rpc: Callable[[InferenceServerClient], _T]) -> _T:
        """Run one tritonclient call, retrying as the policy says and translating its errors."""
        self._check_open()
        started = time.monotonic()
        attempt = 0
        while True:
            endpoint = self._endpoints.pick()
            attempt_started = time.monotonic()
            try:
                result = rpc(endpoint.client)
            except InferenceServerException as e:
                shed = was_shed(e, time.monotonic() - attempt_started, self.timeout_s)
                tls_reason = self._tls_reason(endpoint, e)
                self._endpoints.report_failure(endpoint, e)
                delay = (
                    None
                    if tls_reason
                    else self._retry.next_delay_s(
                        e,
                        attempt,
                        time.monotonic() - started,
                        model_was_served=self._endpoints.model_was_served,
                        shed=shed,
                    )
                )
                if delay is None:
                    raise translate_error(e, endpoint.url, shed=shed, tls_reason=tls_reason) from e
                time.sleep(delay)
                self._check_open()  # closed meanwhile (Ctrl-C in the CLI): stop retrying
                attempt += 1
            else:
                self._endpoints.report_success()
                return result

    def _tls_reason(self, endpoint: Endpoint, error: InferenceServerException) -> str | None:
        """A TLS explanation for an endpoint that closes our connections (asked once)."""
        if endpoint.tls_checked or not _security.connection_closed(error):
            return None
        endpoint.tls_checked = True
        return _security.diagnose_closed_connection(endpoint.url, self._tls)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed; create a new UbmClient")


def _flatten(batches: Iterator[list[Score]]) -> Iterator[Score]:
    # A generator, so that closing it closes `batches`, which stops the requests in flight.
    with closing(batches):
        for scores in batches:
            yield from scores
