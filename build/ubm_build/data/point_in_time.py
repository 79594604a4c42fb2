"""Point-in-time knowledge for training: each example reads the snapshot of its own day.

A nightly feature job computes a `Snapshot` at midnight (China time) from every event before
it; a request on that day is served with it. Training does the same: an example is a request
made at its last event, so an example whose last event falls on day D reads the snapshot as of
D 00:00. That snapshot counts only events strictly before it, so never an event at or after the
example's prediction time (which is later than its last event).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ubm.records import Event
from ubm_build.data.taobao import WINDOWS, Example, read_events
from ubm_build.inputs.behaviour_text import CHINA, EVENT_TYPES, behaviour_text
from ubm_build.inputs.model_inputs import ModelInputs, RecordReader
from ubm_build.inputs.snapshot import Snapshot, day_start, id_words
from ubm_build.paths import DEFAULT_CSV

CHINA_OFFSET_S = int(CHINA.utcoffset(None).total_seconds())
SERVING_AS_OF = WINDOWS["test"][0]
"""The served snapshot's time: the start of the day the model is evaluated on (and served)."""


@dataclass(frozen=True)
class EventLog:
    """Every event as parallel arrays (what a feature job scans)."""

    ts: np.ndarray
    users: np.ndarray
    items: np.ndarray
    categories: np.ndarray
    types: np.ndarray
    """Index into `EVENT_TYPES`."""

    @classmethod
    def from_users(cls, by_user: dict[str, list[Event]]) -> EventLog:
        rows = [(user, e) for user, events in by_user.items() for e in events]
        users = {user: i for i, user in enumerate(by_user)}
        return cls(
            ts=np.array([e.ts for _, e in rows], dtype=np.int64),
            users=np.array([users[user] for user, _ in rows], dtype=np.int64),
            items=np.array([e.item for _, e in rows], dtype=str),
            categories=np.array([e.category for _, e in rows], dtype=str),
            types=np.array([EVENT_TYPES.index(e.type) for _, e in rows], dtype=np.int64),
        )

    @classmethod
    def read(cls, csv: Path = DEFAULT_CSV) -> EventLog:
        return cls.from_users(read_events(csv))

    def snapshot(self, as_of: int) -> Snapshot:
        """What a feature job running at `as_of` knows."""
        return Snapshot.from_events(
            as_of,
            ts=self.ts,
            users=self.users,
            items=self.items,
            categories=self.categories,
            types=self.types,
        )


def snapshot_time(example: Example) -> int:
    """The as-of time of the snapshot `example` reads: the start of its last event's day."""
    return day_start(example.events[-1].ts, CHINA_OFFSET_S)


@dataclass
class DailySnapshots:
    """The nightly snapshots of an event log, computed on first use."""

    log: EventLog
    by_day: dict[int, Snapshot] = field(default_factory=dict)

    def at(self, as_of: int) -> Snapshot:
        if as_of not in self.by_day:
            self.by_day[as_of] = self.log.snapshot(as_of)
        return self.by_day[as_of]


def _by_day(examples: Sequence[Example]) -> dict[int, list[int]]:
    rows: dict[int, list[int]] = defaultdict(list)
    for row, example in enumerate(examples):
        rows[snapshot_time(example)].append(row)
    return rows


def point_in_time_inputs(
    reader: RecordReader, examples: Sequence[Example], snapshots: DailySnapshots
) -> ModelInputs:
    """`reader`'s inputs of each example with its own day's snapshot, in the examples' order.

    Days are read separately and padded to the widest of them.
    """
    by_day = _by_day(examples)
    parts = {
        day: reader.at(snapshots.at(day))([examples[row].events for row in rows])
        for day, rows in by_day.items()
    }
    width = max(part.ids.shape[1] for part in parts.values())
    pad_id = reader.tokenizer.token_to_id("[PAD]") or 0
    first = next(iter(parts.values()))
    ids = np.full((len(examples), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(examples), width), dtype=np.int64)
    features = np.zeros((len(examples), first.features.shape[1]), dtype=np.float32)
    truncated = np.zeros(len(examples), dtype=bool)
    for day, rows in by_day.items():
        part = parts[day]
        ids[rows, : part.ids.shape[1]] = part.ids
        mask[rows, : part.mask.shape[1]] = part.mask
        features[rows] = part.features
        truncated[rows] = part.truncated
    return ModelInputs(ids, mask, features, truncated)


def point_in_time_texts(
    examples: Sequence[Example], snapshots: DailySnapshots, *, snapshot_words: bool, words: int
) -> list[str]:
    """Each example's behaviour text (cut after `words` words) as its own day's reader
    renders it."""
    texts = [""] * len(examples)
    for day, rows in _by_day(examples).items():
        sequences = [examples[row].events for row in rows]
        per_record = id_words(snapshots.at(day), sequences) if snapshot_words else None
        for i, row in enumerate(rows):
            record_words = per_record[i] if per_record is not None else None
            texts[row] = behaviour_text(sequences[i], max_words=words, id_words=record_words)
    return texts
