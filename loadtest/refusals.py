"""Which failed calls were refusals: the server's queue bound turning a request away.

A model's queue policy (``ubm-build repository --max-queue-size/--queue-timeout-ms``) refuses a
request at once when the queue is full, or once it has waited longer than the policy allows.
Triton 2.51 answers both with gRPC UNAVAILABLE, the message naming the ensemble and the reason::

    in ensemble 'ubm', [request id: <id_unknown>] Exceeds maximum queue size
    in ensemble 'ubm', Request timeout expired

The SDK retries both (the second only when the server's limit, not the client's timeout, ran
out); with retries off, or once they are used up, the call raises `ServerUnavailableError`.
The load tests count these apart from failures: the server did what it was told to under
overload. No Locust import, so the tests can check it directly.
"""

from __future__ import annotations

from ubm import ServerUnavailableError
from ubm.exceptions import QUEUE_TIMEOUT_MESSAGE

REFUSED_TYPE = "refused"
"""The Locust request type of refusals; their name is the request's plus the reason, e.g.
``score_batch[1] (queue full)``."""
QUEUE_FULL_MESSAGE = "Exceeds maximum queue size"
"""Triton's message when a model's queue holds ``max_queue_size`` requests already."""
QUEUE_FULL = "queue full"
QUEUE_TIMEOUT = "queue timeout"


def refusal_reason(error: BaseException | None) -> str | None:
    """`QUEUE_FULL` or `QUEUE_TIMEOUT` when `error` is a queue policy's refusal, else None.

    A queue timeout that the client's own timeout caused is a `RequestTimeoutError` in the SDK,
    not a refusal: nobody was waiting for the answer any more.
    """
    if not isinstance(error, ServerUnavailableError):
        return None
    message = str(error)
    if QUEUE_FULL_MESSAGE in message:
        return QUEUE_FULL
    if QUEUE_TIMEOUT_MESSAGE in message:
        return QUEUE_TIMEOUT
    return None


class RefusedRequest(Exception):
    """A refusal where an exception is expected: Locust's request event carries none for it."""
