"""Errors raised by the ubm SDK. Callers never see tritonclient's or gRPC's exception types.

The hierarchy::

    UbmError
    ├── InvalidRecordError          a record failed client-side validation (nothing was sent)
    ├── SecurityError               refused for security reasons; never retried
    │   ├── AuthenticationError     the server requires a token and the call had none or a
    │   │                           wrong one
    │   └── TlsError                the TLS handshake failed: the server's certificate is not
    │                               trusted, or it requires a client certificate, or one side
    │                               speaks TLS and the other does not
    ├── TransportError              the request did not get a server answer
    │   ├── ServerUnavailableError  connection refused / UNAVAILABLE / RESOURCE_EXHAUSTED,
    │   │                           raised once the retries are used up
    │   └── RequestTimeoutError     DEADLINE_EXCEEDED, or a server queue's "Request timeout
    │                               expired": no answer within the client timeout
    └── ServerError                 the server answered with an error
        ├── ModelNotReadyError      the model is unknown to the server or not loaded yet
        └── InvalidRequestError     INVALID_ARGUMENT: the server rejected the request

`from_triton_error` is the one place where tritonclient errors are translated.
"""

from __future__ import annotations

from tritonclient.utils import InferenceServerException

from ubm.records import RecordError


class UbmError(Exception):
    """Base class of every error the SDK raises."""


class InvalidRecordError(UbmError):
    """A record does not follow the schema; raised before anything is sent.

    Attributes:
        index: position of the record in the input sequence.
        field: what is wrong, one of `ubm.records.ERROR_FIELDS`.
    """

    def __init__(self, index: int, error: RecordError) -> None:
        # Same "record <i>: <why>" wording as the server's preprocess model.
        super().__init__(f"record {index}: {error}")
        self.index = index
        self.field = error.field


class SecurityError(UbmError):
    """The server refused the client, or the client the server, for security reasons."""


class AuthenticationError(SecurityError):
    """The server requires a token (``ubm-build serve --token-file``) and did not get it."""


class TlsError(SecurityError):
    """The TLS handshake failed; the message says which side refused and what to pass."""


class TransportError(UbmError):
    """The request did not get an answer from the server."""


class ServerUnavailableError(TransportError):
    """The server could not be reached or stayed overloaded after all retries."""


class RequestTimeoutError(TransportError):
    """The server did not answer within the client timeout."""


class ServerError(UbmError):
    """The server answered with an error."""


class ModelNotReadyError(ServerError):
    """The model is unknown to the server or is not loaded (yet)."""


class InvalidRequestError(ServerError):
    """The server rejected the request as invalid (gRPC INVALID_ARGUMENT)."""


# tritonclient reports the gRPC status as str(grpc.StatusCode.X), e.g. "StatusCode.UNAVAILABLE".
_ERRORS_BY_STATUS: dict[str, type[UbmError]] = {
    "StatusCode.UNAVAILABLE": ServerUnavailableError,
    "StatusCode.RESOURCE_EXHAUSTED": ServerUnavailableError,
    "StatusCode.DEADLINE_EXCEEDED": RequestTimeoutError,
    "StatusCode.INVALID_ARGUMENT": InvalidRequestError,
    # Triton: "Request for unknown model: 'x' is not found" / "... has no available versions".
    "StatusCode.NOT_FOUND": ModelNotReadyError,
}
# Triton answers UNAVAILABLE when it cannot be reached, while a model version loads, and when a
# request waited in a model's queue longer than its own timeout (which the SDK sets to the
# client's): the last one is the client's timeout, seen by the server first.
_MODEL_LOADING_MESSAGE = "is not at ready state"
QUEUE_TIMEOUT_MESSAGE = "Request timeout expired"


def from_triton_error(error: InferenceServerException) -> UbmError:
    """Translate a tritonclient error into the matching `UbmError`; raise it ``from error``.

    Args:
        error: what a tritonclient call raised.

    Returns:
        The `UbmError` subclass for the error's gRPC status, carrying the server's message.
        Any other status becomes a `ServerError` whose message starts with the status.
    """
    message = error.message() or ""
    if _MODEL_LOADING_MESSAGE in message:
        return ModelNotReadyError(message)
    if QUEUE_TIMEOUT_MESSAGE in message:
        return RequestTimeoutError(message)
    mapped = _ERRORS_BY_STATUS.get(error.status())
    return mapped(message) if mapped else ServerError(str(error))
