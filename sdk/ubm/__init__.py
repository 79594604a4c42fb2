"""Python SDK and CLI for the ubm user-behaviour model served by NVIDIA Triton."""

from ubm.async_client import AsyncUbmClient
from ubm.client import UbmClient
from ubm.config import TlsConfig
from ubm.exceptions import (
    AuthenticationError,
    InvalidRecordError,
    InvalidRequestError,
    ModelNotReadyError,
    RequestTimeoutError,
    SecurityError,
    ServerError,
    ServerUnavailableError,
    TlsError,
    TransportError,
    UbmError,
)
from ubm.records import Event, Record, RecordError, parse_record, parse_record_json
from ubm.scores import Score

__version__ = "0.1.0"

__all__ = [
    "AsyncUbmClient",
    "AuthenticationError",
    "Event",
    "InvalidRecordError",
    "InvalidRequestError",
    "ModelNotReadyError",
    "Record",
    "RecordError",
    "RequestTimeoutError",
    "Score",
    "SecurityError",
    "ServerError",
    "ServerUnavailableError",
    "TlsConfig",
    "TlsError",
    "TransportError",
    "UbmClient",
    "UbmError",
    "__version__",
    "parse_record",
    "parse_record_json",
]
