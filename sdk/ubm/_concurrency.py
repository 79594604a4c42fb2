"""Bounded, order-keeping concurrency for ``score_iter`` and the CLI: threads and asyncio tasks.

Both helpers take items lazily and hold at most ``max_in_flight`` of them (and their results),
so memory stays constant for unbounded inputs. Results come out in input order; an error comes
out at its item's position, after the results of every earlier item.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")


def chunked(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """Consecutive lists of ``size`` items (the last one may be shorter), read lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


async def achunked(items: Iterable[_T] | AsyncIterable[_T], size: int) -> AsyncIterator[list[_T]]:
    """`chunked` for an iterable or an async iterable."""
    if not isinstance(items, AsyncIterable):
        for chunk in chunked(items, size):
            yield chunk
        return
    chunk: list[_T] = []
    async for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def aenumerate(items: AsyncIterable[_T]) -> AsyncIterator[tuple[int, _T]]:
    """`enumerate` for an async iterable."""
    index = 0
    async for item in items:
        yield index, item
        index += 1


def check_max_in_flight(max_in_flight: int) -> None:
    """Raise ValueError unless ``max_in_flight`` is at least 1."""
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")


def map_ordered(
    fn: Callable[[_T], _R], items: Iterable[_T], max_in_flight: int
) -> Generator[_R, None, None]:
    """``fn`` over ``items`` on up to ``max_in_flight`` threads, yielding results in input order.

    Raises:
        ValueError: ``max_in_flight`` is below 1.
        Exception: whatever ``fn`` raised, at its item's position; later calls are cancelled.
    """
    check_max_in_flight(max_in_flight)
    return _map_ordered(fn, items, max_in_flight)


def _map_ordered(
    fn: Callable[[_T], _R], items: Iterable[_T], max_in_flight: int
) -> Generator[_R, None, None]:
    pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="ubm")
    pending: deque[Future[_R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) == max_in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        # On an error, an early stop or Ctrl-C: drop the queued calls and let the running ones
        # end by themselves (at once when their client is closed). Waiting for them here would
        # hold the caller up for as long as a call and its retries may take.
        pool.shutdown(wait=False, cancel_futures=True)


def amap_ordered(
    fn: Callable[[_T], Awaitable[_R]], items: AsyncIterable[_T], max_in_flight: int
) -> AsyncGenerator[_R, None]:
    """``fn`` over ``items`` as up to ``max_in_flight`` tasks, yielding results in input order.

    Raises:
        ValueError: ``max_in_flight`` is below 1.
        Exception: whatever ``fn`` raised, at its item's position; later tasks are cancelled.
    """
    check_max_in_flight(max_in_flight)
    return _amap_ordered(fn, items, max_in_flight)


async def _amap_ordered(
    fn: Callable[[_T], Awaitable[_R]], items: AsyncIterable[_T], max_in_flight: int
) -> AsyncGenerator[_R, None]:
    pending: deque[asyncio.Future[_R]] = deque()
    try:
        async for item in items:
            pending.append(asyncio.ensure_future(fn(item)))
            if len(pending) == max_in_flight:
                yield await pending.popleft()
        while pending:
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
