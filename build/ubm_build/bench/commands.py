"""What the bench commands (`benchmark`, `tune`, `cli_vs_perf_analyzer`) share on their click
side: count and batch-size options, and the library's errors turned into click's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from ubm import contract
from ubm_build.bench.errors import BenchError
from ubm_build.options import Decorator


def count_option(flag: str, default: int, help_text: str | None = None) -> Decorator:
    """An option taking a whole number of 1 or more, its default shown in ``--help``."""
    return click.option(
        flag, type=click.IntRange(1), default=default, show_default=True, help=help_text
    )


def batch_size_option(default: int, help_text: str | None = None) -> Decorator:
    """``--batch-size``: records per request, 1 to `contract.MAX_BATCH_SIZE`."""
    return click.option(
        "--batch-size",
        type=click.IntRange(1, contract.MAX_BATCH_SIZE),
        default=default,
        show_default=True,
        help=help_text,
    )


@contextmanager
def click_errors() -> Iterator[None]:
    """A `BenchError` inside ends the command with its message (exit 1)."""
    try:
        yield
    except BenchError as e:
        raise click.ClickException(str(e)) from e
