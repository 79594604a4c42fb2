"""Request payloads for the load tests: real Taobao sessions, drawn at random per request.

Kept free of Locust imports (Locust monkey-patches the process when imported), so the tests and
the capacity driver can use it anywhere.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from ubm import contract
from ubm.records import Record, parse_record_json


def read_records(path: Path) -> list[Record]:
    """Parse and validate every non-blank line of a JSONL file of records.

    Raises:
        ValueError: a line is not a valid record (its line number is named), or none is there.
    """
    records = []
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(parse_record_json(line))
            except ValueError as e:
                raise ValueError(f"{path}:{number}: {e}") from e
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


class RecordPool:
    """Validated records from which each request draws `batch_size` at random.

    A batch never holds the same record twice unless the pool is smaller than the batch.
    """

    def __init__(self, records: Sequence[Record], batch_size: int, seed: int | None = None):
        if not records:
            raise ValueError("the record pool is empty")
        if not 1 <= batch_size <= contract.MAX_BATCH_SIZE:
            raise ValueError(f"batch size must be 1 to {contract.MAX_BATCH_SIZE}, got {batch_size}")
        self.records = list(records)
        self.batch_size = batch_size
        self._rng = random.Random(seed)

    def draw(self) -> list[Record]:
        if self.batch_size <= len(self.records):
            return self._rng.sample(self.records, self.batch_size)
        return self._rng.choices(self.records, k=self.batch_size)


def response_bytes(scores: Sequence) -> int:
    """Bytes of output tensor data in an answer: 4 per probability, 4 per embedding value."""
    return sum(4 + 4 * len(score.embedding or ()) for score in scores)
