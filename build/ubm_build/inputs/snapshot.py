"""Point-in-time item and category knowledge: what a nightly feature job knows at ``as_of``.

A `Snapshot` counts, per item and per category, the events strictly before its ``as_of``
time: events by type, distinct users and the time of the last event. `snapshot_features` looks
up a batch of records' items and categories in it (one vectorised ``searchsorted`` per table)
and gives `SNAPSHOT_FEATURE_NAMES`. An id the snapshot never saw is *unseen*: its counts are 0,
its age is `UNSEEN_AGE_S` and the ``*_unseen`` columns say so.

Training reads, for each example, the snapshot as of the start of the (China) day of its last
event, so no example sees an event at or after its prediction time; the served repository holds
the snapshot as of the day it serves. Saved as one ``.npz`` file (`save`, `load`).

Copied into the model repository next to ``behaviour_text.py``; there its flat neighbours are
imported, never the installed build package. Standard library and numpy only.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:  # in Triton's preprocess directory: the copies beside this file
    from behaviour_text import EVENT_TYPES, MAX_TEXT_EVENTS, EventLike, split_session
except ImportError:  # in the source tree
    from ubm_build.inputs.behaviour_text import (
        EVENT_TYPES,
        MAX_TEXT_EVENTS,
        EventLike,
        split_session,
    )

FILE = "snapshot.npz"
FORMAT_VERSION = 1
UNSEEN_AGE_S = 30 * 86400
"""The age of an id the snapshot never saw (older than anything the data holds)."""
RATE_PRIOR_EVENTS = {"item": 20.0, "category": 100.0}
"""Pseudo-events at the snapshot's overall buy rate mixed into each id's buy rate."""
_BUY = EVENT_TYPES.index("buy")

SNAPSHOT_FEATURE_NAMES: tuple[str, ...] = (
    "last_item_events",
    "last_item_buys",
    "last_item_users",
    "last_item_buy_rate",
    "last_item_age_s",
    "last_item_unseen",
    "last_category_events",
    "last_category_users",
    "last_category_buy_rate",
    "last_category_unseen",
    "session_items_events_mean",
    "session_items_buys_max",
    "session_items_buy_rate_max",
    "session_items_unseen_share",
    "session_categories_buy_rate_max",
)
"""Columns of `snapshot_features`; counts and ages are ``log1p``-scaled."""


@dataclass(frozen=True)
class Table:
    """Statistics of one kind of id (items or categories), rows sorted by id."""

    ids: np.ndarray
    """str [n], sorted and unique."""
    counts: np.ndarray
    """int64 [n, 4]: events by type, in `EVENT_TYPES` order."""
    users: np.ndarray
    """int64 [n]: distinct users."""
    last_ts: np.ndarray
    """int64 [n]: unix seconds of the last event."""

    def find(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where unseen."""
        if len(self.ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        rows = np.searchsorted(self.ids, ids)
        clipped = np.minimum(rows, len(self.ids) - 1)
        return np.where(self.ids[clipped] == ids, clipped, -1)


@dataclass(frozen=True)
class Snapshot:
    as_of: int
    """Unix seconds: every event counted happened strictly before it."""
    items: Table
    categories: Table

    @classmethod
    def from_events(
        cls,
        as_of: int,
        *,
        ts: np.ndarray,
        users: np.ndarray,
        items: np.ndarray,
        categories: np.ndarray,
        types: np.ndarray,
    ) -> Snapshot:
        """The snapshot of the events (parallel arrays; `types` index `EVENT_TYPES`) before
        `as_of`."""
        before = ts < as_of
        return cls(
            as_of,
            _table(items[before], users[before], types[before], ts[before]),
            _table(categories[before], users[before], types[before], ts[before]),
        )

    @classmethod
    def empty(cls, as_of: int = 0) -> Snapshot:
        """A snapshot that has seen nothing (every id unseen)."""
        none = np.array([], dtype=np.int64)
        return cls.from_events(
            as_of,
            ts=none,
            users=none,
            items=none.astype(str),
            categories=none.astype(str),
            types=none,
        )

    @functools.cached_property
    def buy_rate(self) -> float:
        """Buys per event over everything counted (the prior of the smoothed rates; computed
        once, not on every lookup)."""
        total = self.items.counts.sum()
        return float(self.items.counts[:, _BUY].sum() / total) if total else 0.0

    def save(self, path: Path) -> None:
        """Write as one ``.npz`` (uncompressed, so its bytes and hash are reproducible)."""
        buffer = io.BytesIO()
        np.savez(buffer, **self._arrays())
        path.write_bytes(buffer.getvalue())

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"format_version": np.int64(FORMAT_VERSION), "as_of": np.int64(self.as_of)}
        for kind, table in (("item", self.items), ("category", self.categories)):
            arrays |= {
                f"{kind}_ids": table.ids,
                f"{kind}_counts": table.counts,
                f"{kind}_users": table.users,
                f"{kind}_last_ts": table.last_ts,
            }
        return arrays

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        """Read a file written by `save`.

        Raises:
            ValueError: the file is not a snapshot of this format.
        """
        with np.load(path, allow_pickle=False) as f:
            if "format_version" not in f or int(f["format_version"]) != FORMAT_VERSION:
                raise ValueError(f"{path} is not a ubm snapshot of format {FORMAT_VERSION}")
            tables = [
                Table(
                    f[f"{kind}_ids"],
                    f[f"{kind}_counts"],
                    f[f"{kind}_users"],
                    f[f"{kind}_last_ts"],
                )
                for kind in ("item", "category")
            ]
            return cls(int(f["as_of"]), *tables)

    def metadata(self, path: Path) -> dict[str, str]:
        """What the served model says about its snapshot: as-of time, rows, file hash."""
        return {
            "snapshot_as_of": str(self.as_of),
            "snapshot_items": str(len(self.items.ids)),
            "snapshot_categories": str(len(self.categories.ids)),
            "snapshot_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }


def _table(ids: np.ndarray, users: np.ndarray, types: np.ndarray, ts: np.ndarray) -> Table:
    keys, row = np.unique(ids.astype(str), return_inverse=True)
    # As wide as the longest id counted, not as the input's widest (an event after as_of):
    # the same knowledge gives the same file.
    keys = np.array(keys.tolist(), dtype=str)
    counts = np.zeros((len(keys), len(EVENT_TYPES)), dtype=np.int64)
    np.add.at(counts, (row, types), 1)
    pairs = np.unique(np.stack([row, users.astype(np.int64)]), axis=1) if len(row) else row
    distinct = np.bincount(pairs[0], minlength=len(keys)) if len(row) else row
    last_ts = np.zeros(len(keys), dtype=np.int64)
    np.maximum.at(last_ts, row, ts.astype(np.int64))
    return Table(keys, counts, distinct.astype(np.int64), last_ts)


@dataclass(frozen=True)
class _Lookup:
    """The statistics of looked-up ids, unseen ones filled with their explicit values."""

    unseen: np.ndarray
    events: np.ndarray
    buys: np.ndarray
    users: np.ndarray
    buy_rate: np.ndarray
    age_s: np.ndarray


def _lookup(snapshot: Snapshot, table: Table, ids: np.ndarray, kind: str) -> _Lookup:
    rows = table.find(ids)
    seen = rows >= 0
    picked = np.where(seen, rows, 0)
    if len(table.ids):
        counts = np.where(seen[:, None], table.counts[picked], 0)
        users = np.where(seen, table.users[picked], 0)
        age = np.where(seen, snapshot.as_of - table.last_ts[picked], UNSEEN_AGE_S)
    else:
        counts = np.zeros((len(ids), len(EVENT_TYPES)), dtype=np.int64)
        users = np.zeros(len(ids), dtype=np.int64)
        age = np.full(len(ids), UNSEEN_AGE_S)
    events, buys = counts.sum(1), counts[:, _BUY]
    prior = RATE_PRIOR_EVENTS[kind]
    rate = (buys + prior * snapshot.buy_rate) / (events + prior)
    return _Lookup(~seen, events, buys, users, rate, np.clip(age, 0, UNSEEN_AGE_S))


def snapshot_features(snapshot: Snapshot, event_sequences: Sequence[Sequence[EventLike]]):
    """`SNAPSHOT_FEATURE_NAMES` (float32 [n, K]) of time-ordered event sequences.

    The session's distinct items and categories (`split_session`) are looked up in two
    vectorised searches for the whole batch and reduced per record.
    """
    n = len(event_sequences)
    if n == 0:
        return np.zeros((0, len(SNAPSHOT_FEATURE_NAMES)), dtype=np.float32)
    last_items, last_categories, session_items, session_categories = [], [], [], []
    item_starts, category_starts = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for row, events in enumerate(event_sequences):
        session = split_session(events)[1]
        last_items.append(events[-1].item)
        last_categories.append(events[-1].category)
        item_starts[row], category_starts[row] = len(session_items), len(session_categories)
        session_items.extend(dict.fromkeys(e.item for e in session))
        session_categories.extend(dict.fromkeys(e.category for e in session))
    last_item = _lookup(snapshot, snapshot.items, np.array(last_items, dtype=str), "item")
    last_category = _lookup(
        snapshot, snapshot.categories, np.array(last_categories, dtype=str), "category"
    )
    items = _lookup(snapshot, snapshot.items, np.array(session_items, dtype=str), "item")
    categories = _lookup(
        snapshot, snapshot.categories, np.array(session_categories, dtype=str), "category"
    )
    item_lengths = np.diff(np.append(item_starts, len(session_items)))
    log = np.log1p
    columns = {
        "last_item_events": log(last_item.events),
        "last_item_buys": log(last_item.buys),
        "last_item_users": log(last_item.users),
        "last_item_buy_rate": last_item.buy_rate,
        "last_item_age_s": log(last_item.age_s),
        "last_item_unseen": last_item.unseen,
        "last_category_events": log(last_category.events),
        "last_category_users": log(last_category.users),
        "last_category_buy_rate": last_category.buy_rate,
        "last_category_unseen": last_category.unseen,
        "session_items_events_mean": np.add.reduceat(log(items.events), item_starts) / item_lengths,
        "session_items_buys_max": log(np.maximum.reduceat(items.buys, item_starts)),
        "session_items_buy_rate_max": np.maximum.reduceat(items.buy_rate, item_starts),
        "session_items_unseen_share": np.add.reduceat(items.unseen, item_starts) / item_lengths,
        "session_categories_buy_rate_max": np.maximum.reduceat(
            categories.buy_rate, category_starts
        ),
    }
    return np.stack([columns[name] for name in SNAPSHOT_FEATURE_NAMES], axis=1).astype(np.float32)


def day_start(ts: int, utc_offset_s: int) -> int:
    """Unix seconds of the start of `ts`'s day in the time zone `utc_offset_s` east of UTC."""
    return (ts + utc_offset_s) // 86400 * 86400 - utc_offset_s


ITEM_WORDS = ("new", "rare", "popular")
"""An item's word by its events in the snapshot: none, fewer than `POPULAR_ITEM_EVENTS`, more;
``bought`` is added when the snapshot holds a purchase of it."""
POPULAR_ITEM_EVENTS = 3
CATEGORY_WORDS = ("new", "cold", "warm", "hot")
"""A category's word: unseen, or its smoothed buy rate against the snapshot's overall rate
(below `COLD_RATE`, up to `HOT_RATE`, above)."""
COLD_RATE, HOT_RATE = 0.95, 1.2


def id_words(
    snapshot: Snapshot, event_sequences: Sequence[Sequence[EventLike]]
) -> list[list[tuple[str, str]]]:
    """``(item word, category word)`` of each of the newest `MAX_TEXT_EVENTS` events of each
    sequence (oldest first): the snapshot's knowledge as words the tokenizer knows."""
    newest = [list(events[-MAX_TEXT_EVENTS:]) for events in event_sequences]
    flat = [event for events in newest for event in events]
    if not flat:
        return [[] for _ in newest]
    item = _lookup(snapshot, snapshot.items, np.array([e.item for e in flat], dtype=str), "item")
    category = _lookup(
        snapshot,
        snapshot.categories,
        np.array([e.category for e in flat], dtype=str),
        "category",
    )
    item_level = np.where(item.unseen, 0, np.where(item.events < POPULAR_ITEM_EVENTS, 1, 2))
    item_word = np.array(ITEM_WORDS, dtype=object)[item_level]
    item_word = np.where(item.buys > 0, item_word + " bought", item_word)
    relative = category.buy_rate / max(snapshot.buy_rate, 1e-12)
    category_level = np.where(
        category.unseen, 0, 1 + (relative >= COLD_RATE) + (relative > HOT_RATE)
    )
    category_word = np.array(CATEGORY_WORDS, dtype=object)[category_level]
    pairs = list(zip(item_word.tolist(), category_word.tolist(), strict=True))
    out, start = [], 0
    for events in newest:
        out.append(pairs[start : start + len(events)])
        start += len(events)
    return out
