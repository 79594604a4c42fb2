"""Several Triton endpoints behind one client: round robin over the healthy ones.

An endpoint that could not be reached, or that stopped serving the model (a graceful restart,
a rollout), is skipped for a cool-down, then tried again. When every endpoint is cooling down,
the one that failed first is used, so a client with a single endpoint behaves as if there were
no cool-down. No I/O: the clients make the calls.

One endpoint may itself be several servers: a ``dns:`` target (`parse_urls`) is one channel that
gRPC balances over every address of the name, and that skips a dead one on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from tritonclient.utils import InferenceServerException

from ubm._base import is_retryable

_C = TypeVar("_C")

DNS_SCHEME = "dns:"
"""gRPC's DNS target, ``dns:[//DNS_SERVER/]NAME:PORT``: the channel itself spreads its calls
over every address the name resolves to (see `ubm.config.LB_POLICY`). ``DNS_SERVER`` needs
grpcio's default resolver, c-ares: ``GRPC_DNS_RESOLVER=native`` ignores it."""
_OTHER_GRPC_SCHEMES = ("ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


def parse_urls(url: str) -> list[str]:
    """Split ``"host:port"``, ``"a:8001,[::1]:8001"`` or ``"dns:///ubm-headless:8001"`` into
    gRPC targets, each checked.

    Each target is ``HOST:PORT``, ``[IPV6]:PORT``, or gRPC's DNS target
    ``dns:[//DNS_SERVER[:PORT]/]NAME:PORT``, whose channel connects to every address the name
    resolves to, e.g. each pod of a Kubernetes headless Service (``DNS_SERVER`` asks that
    server instead of the system's resolver). Several targets are used in turn by
    `EndpointPool`.

    Raises:
        ValueError: a target is empty, a URL, has no host, or no port from 1 to 65535.
    """
    urls = [part.strip() for part in url.split(",")]
    for target in urls:
        _check_target(target)
    return urls


def _check_target(target: str) -> None:
    if target.startswith(DNS_SCHEME):
        _check_dns_target(target)
    elif target.startswith(_OTHER_GRPC_SCHEMES):
        raise ValueError(
            f"of gRPC's target schemes only dns: is supported, got {target!r}; list several"
            " addresses as HOST:PORT,HOST:PORT"
        )
    elif "://" in target:
        raise ValueError(
            f"expected a gRPC target HOST:PORT or dns:[//DNS_SERVER/]NAME:PORT, not a URL;"
            f" got {target!r}"
        )
    else:
        _check_address(target, target)


def _check_dns_target(target: str) -> None:
    name = target.removeprefix(DNS_SCHEME)
    if name.startswith("//"):
        server, sep, name = name[2:].partition("/")
        if not sep:
            raise ValueError(f"expected dns://DNS_SERVER/NAME:PORT, got {target!r}")
        # The DNS server's port may be left out (53).
        if server and (server.endswith("]") or ":" not in server):
            _check_address(f"{server}:53", target)
        elif server:
            _check_address(server, target)
    # gRPC's default port for a DNS name is 443, which is not Triton's: required here.
    _check_address(name, target)


def _check_address(address: str, target: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or host in ("[", "[]") or "/" in host:
        raise ValueError(f"expected HOST:PORT or dns:[//DNS_SERVER/]NAME:PORT, got {target!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    if not bracketed and any(c in host for c in ":[]"):
        raise ValueError(f"an IPv6 host goes in brackets, as in [::1]:8001; got {target!r}")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"the port must be a number from 1 to 65535, got {target!r}")


@dataclass
class Endpoint(Generic[_C]):
    """One server address with its tritonclient client."""

    url: str
    client: _C
    unavailable_until: float = 0.0
    """`time.monotonic` time before which the endpoint is skipped."""
    tls_checked: bool = False
    """Whether a closed connection was diagnosed (`ubm._security`), which is done once."""


class EndpointPool(Generic[_C]):
    """Picks the endpoint for each call; safe to share between threads.

    Args:
        urls: the server addresses, at least one.
        connect: makes the tritonclient client of one address.
        cooldown_s: how long an endpoint is skipped after an UNAVAILABLE answer.
    """

    def __init__(self, urls: list[str], connect: Callable[[str], _C], cooldown_s: float) -> None:
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must not be negative, got {cooldown_s}")
        self._endpoints = [Endpoint(url, connect(url)) for url in urls]
        self._cooldown_s = cooldown_s
        self._next = 0
        self._lock = threading.Lock()
        self.model_was_served = False
        """Whether a call has succeeded at some endpoint (see `ubm._base.MODEL_GONE_STATUS`)."""

    def __iter__(self) -> Iterator[Endpoint[_C]]:
        return iter(self._endpoints)

    def pick(self) -> Endpoint[_C]:
        """The next healthy endpoint in turn, or the one whose cool-down ends first."""
        with self._lock:
            now = time.monotonic()
            n = len(self._endpoints)
            for step in range(n):
                endpoint = self._endpoints[(self._next + step) % n]
                if endpoint.unavailable_until <= now:
                    self._next = (self._next + step + 1) % n
                    return endpoint
            return min(self._endpoints, key=lambda e: e.unavailable_until)

    def report_success(self) -> None:
        """Record that the model answered."""
        self.model_was_served = True

    def report_failure(self, endpoint: Endpoint[_C], error: InferenceServerException) -> None:
        """Start the endpoint's cool-down when ``error`` says it is unreachable, overloaded or
        no longer serving the model."""
        if is_retryable(error, model_was_served=self.model_was_served):
            with self._lock:
                endpoint.unavailable_until = time.monotonic() + self._cooldown_s
