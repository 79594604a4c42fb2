"""Client settings shared by `UbmClient`, `AsyncUbmClient` and the CLI: defaults and TLS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

DEFAULT_TIMEOUT_S = 30.0
"""The limit for each call to the server, per attempt."""
DEFAULT_RETRY_DEADLINE_S = 60.0
"""How long a call keeps being retried while the server is unreachable: long enough to ride out a
restart of the server, whose python-backend models take several seconds to load (README)."""
DEFAULT_BACKOFF_S = 0.2
DEFAULT_MAX_BACKOFF_S = 2.0
DEFAULT_COOLDOWN_S = 5.0
"""How long an endpoint that answered UNAVAILABLE is skipped while others are healthy."""
DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_IN_FLIGHT = 4
"""Requests in flight at once in ``score_iter``."""
MAX_RECONNECT_BACKOFF_MS = 1000
"""gRPC backs off up to 120 s between reconnection attempts by default; capped so that a
restarted server is found again within about a second."""
LB_POLICY = "round_robin"
"""gRPC's load-balancing policy for every channel, whatever its target.

gRPC resolves each target into a list of addresses: a ``dns:`` target, but also a plain
``NAME:PORT``, whose default scheme is DNS, yields one per pod of a Kubernetes headless Service.
gRPC's default policy, pick_first, sends every call to the first address that connects;
round_robin connects to all of them, spreads the calls over those that are ready and leaves out
a failed one until it has reconnected (within `MAX_RECONNECT_BACKOFF_MS`). With one address,
the usual case, the two behave alike, so it is the default rather than a per-target switch;
the cost is one connection per address instead of one per channel."""


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """TLS for the gRPC channel: ``TlsConfig()`` trusts the system's root certificates.

    Attributes:
        root_certificates: PEM file of the certificates that may sign the server's certificate.
        private_key: PEM file of the client's private key, for mutual TLS.
        certificate_chain: PEM file of the client's certificate chain, for mutual TLS.

    Raises:
        ValueError: only one of ``private_key`` and ``certificate_chain`` is given.
    """

    root_certificates: Path | None = None
    private_key: Path | None = None
    certificate_chain: Path | None = None

    def __post_init__(self) -> None:
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("a client certificate needs both private_key and certificate_chain")


def channel_options(tls: TlsConfig | None) -> dict[str, Any]:
    """Keyword arguments for tritonclient's `InferenceServerClient` (sync and aio alike).

    Args:
        tls: the TLS settings, or None for a plaintext channel.

    Returns:
        ``ssl`` and the certificate paths, plus tritonclient's default channel arguments with a
        short reconnection backoff and the `LB_POLICY`.
    """
    keepalive = KeepAliveOptions()
    options: dict[str, Any] = {
        "channel_args": [
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
            ("grpc.lb_policy_name", LB_POLICY),
        ]
    }
    if tls is not None:
        options["ssl"] = True
        for name in ("root_certificates", "private_key", "certificate_chain"):
            path = getattr(tls, name)
            options[name] = None if path is None else str(path)
    return options
