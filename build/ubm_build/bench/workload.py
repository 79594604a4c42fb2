"""The records every row scores: test-day sessions in a fixed order, cut into batches."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from ubm.records import Record, parse_record
from ubm_build import data, paths
from ubm_build.bench.errors import BenchError

Batch = Sequence[Record]
"""Records scored in one call, or sent in one request."""


def sample_records(n: int, csv: Path = paths.DEFAULT_CSV, seed: int = 0) -> list[Record]:
    """`n` test-day sessions in a fixed random order, as the SDK's validated records.

    The test window is repeated when `n` is larger than it.

    Raises:
        BenchError: `csv` has no test-window session.
    """
    examples = [ex for ex in data.make_examples(data.read_events(csv)) if ex.window == "test"]
    if not examples:
        raise BenchError(f"{csv} has no test-window sessions")
    random.Random(seed).shuffle(examples)
    return [parse_record(examples[i % len(examples)].to_record()) for i in range(n)]


def batches_of(records: Sequence[Record], batch_size: int) -> list[list[Record]]:
    """`records` in order, `batch_size` at a time (the last batch may be shorter)."""
    return [list(records[i : i + batch_size]) for i in range(0, len(records), batch_size)]


def read_lines(path: Path, limit: int | None = None) -> list[bytes]:
    """The non-blank lines of a JSON-lines records file, the first `limit` of them if given.

    Raises:
        BenchError: there are none.
    """
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    lines = lines[:limit] if limit else lines
    if not lines:
        raise BenchError(f"{path} holds no records")
    return lines
