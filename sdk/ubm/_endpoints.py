"""Several Triton endpoints behind one client: round robin over the healthy ones.

An endpoint whose call failed with UNAVAILABLE is skipped for a cool-down, then tried again.
When every endpoint is cooling down, the one that failed first is used, so a client with a
single endpoint behaves as if there were no cool-down. No I/O: the clients make the calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from tritonclient.utils import InferenceServerException

_C = TypeVar("_C")


def parse_urls(url: str) -> list[str]:
    """Split ``"host:port"`` or ``"a:8001,b:8001"`` into addresses.

    Raises:
        ValueError: an address is empty.
    """
    urls = [part.strip() for part in url.split(",")]
    if not all(urls):
        raise ValueError(f"url must be host:port[,host:port...], got {url!r}")
    return urls


@dataclass
class Endpoint(Generic[_C]):
    """One server address with its tritonclient client."""

    url: str
    client: _C
    unavailable_until: float = 0.0
    """`time.monotonic` time before which the endpoint is skipped."""


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

    def report_failure(self, endpoint: Endpoint[_C], error: InferenceServerException) -> None:
        """Start the endpoint's cool-down when ``error`` says it is unavailable."""
        if error.status() == "StatusCode.UNAVAILABLE":
            with self._lock:
                endpoint.unavailable_until = time.monotonic() + self._cooldown_s
