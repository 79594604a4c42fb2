"""Taobao UserBehavior logs -> labelled session examples, split by time.

One example per session (sessions are cut at 30 minutes of inactivity): the events before the
session's first purchase, preceded by up to `HISTORY_CAP` of the same user's earlier events.
The label is 1 if a purchase follows in the session, 0 if the session ends without one. A
session whose first event is a purchase gives no example.

Sessions are assigned to a time window (train / valid / test, whole days in China time) and a
session that crosses a window boundary is dropped, so no window sees another's sessions. No
event at or after the prediction point (the first purchase, or the session's end) is part of
an example's record.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from ubm.records import Event
from ubm_build.inputs.behaviour_text import CHINA, SESSION_GAP_S
from ubm_build.paths import DEFAULT_CSV

DATA_START = int(datetime(2017, 11, 25, tzinfo=CHINA).timestamp())
"""Events before the official window (a few dozen) are noise and dropped."""
WINDOWS: dict[str, tuple[int, int]] = {
    "train": (DATA_START, int(datetime(2017, 12, 1, tzinfo=CHINA).timestamp())),
    "valid": (
        int(datetime(2017, 12, 1, tzinfo=CHINA).timestamp()),
        int(datetime(2017, 12, 2, tzinfo=CHINA).timestamp()),
    ),
    "test": (
        int(datetime(2017, 12, 2, tzinfo=CHINA).timestamp()),
        int(datetime(2017, 12, 3, tzinfo=CHINA).timestamp()),
    ),
}
"""[start, end) unix seconds: six days to train on, one to tune on, the last one to report."""
HISTORY_CAP = 50
BEHAVIOUR_TYPES = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "buy"}


@dataclass(frozen=True, slots=True)
class Example:
    user: str
    events: tuple[Event, ...]
    """What the model may see: history plus the session up to the prediction point."""
    label: int
    window: str
    prediction_ts: int
    """Unix seconds of the prediction point: the first purchase, or one past the session's end."""

    @property
    def id(self) -> str:
        return f"u{self.user}-{self.prediction_ts}"

    def to_record(self) -> dict:
        """The example as a schema record (label and window ride along as extra fields)."""
        return {
            "id": self.id,
            "events": [
                {"ts": e.ts, "type": e.type, "item": e.item, "category": e.category}
                for e in self.events
            ],
            "label": self.label,
            "window": self.window,
        }


def read_events(path: Path = DEFAULT_CSV) -> dict[str, list[Event]]:
    """Each user's events in time order (CSV columns: user, item, category, behaviour, ts)."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    with open(path, newline="") as f:
        for user, item, category, behaviour, ts in csv.reader(f):
            if int(ts) < DATA_START:
                continue
            by_user[user].append(
                Event(ts=int(ts), type=BEHAVIOUR_TYPES[behaviour], item=item, category=category)
            )
    for events in by_user.values():
        events.sort(key=lambda e: e.ts)
    return dict(by_user)


def split_sessions(events: list[Event]) -> Iterator[tuple[int, list[Event]]]:
    """(index of the session's first event, session events) for time-ordered events."""
    start = 0
    for i in range(1, len(events) + 1):
        if i == len(events) or events[i].ts - events[i - 1].ts > SESSION_GAP_S:
            yield start, events[start:i]
            start = i


def window_of(first_ts: int, last_ts: int) -> str | None:
    """The window holding the whole span, or None if it crosses a boundary or lies outside."""
    for name, (start, end) in WINDOWS.items():
        if start <= first_ts and last_ts < end:
            return name
    return None


def user_examples(
    user: str, events: list[Event], history_cap: int = HISTORY_CAP
) -> Iterator[Example]:
    for start, session in split_sessions(events):
        window = window_of(session[0].ts, session[-1].ts)
        if window is None:
            continue
        buy_ts = next((e.ts for e in session if e.type == "buy"), None)
        if buy_ts is None:
            label, prediction_ts, seen = 0, session[-1].ts + 1, session
        else:
            # Strictly before the purchase: events in the same second may already follow it.
            label, prediction_ts = 1, buy_ts
            seen = [e for e in session if e.ts < buy_ts]
        if not seen:
            continue
        history = events[max(0, start - history_cap) : start] if history_cap else []
        yield Example(user, tuple(history + seen), label, window, prediction_ts)


def make_examples(by_user: dict[str, list[Event]], history_cap: int = HISTORY_CAP) -> list[Example]:
    """All examples, ordered by prediction time."""
    examples = [
        ex for user, events in by_user.items() for ex in user_examples(user, events, history_cap)
    ]
    examples.sort(key=lambda ex: (ex.prediction_ts, ex.user))
    return examples


def write_jsonl(records: Iterable[dict], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "wb") as f:
        for record in records:
            f.write(orjson.dumps(record) + b"\n")
            n += 1
    return n


def examples_by_window(csv: Path = DEFAULT_CSV) -> dict[str, list[Example]]:
    """Every example of `csv`, by window (``train``, ``valid``, ``test``), in time order."""
    by_window: dict[str, list[Example]] = {name: [] for name in WINDOWS}
    for ex in make_examples(read_events(csv)):
        by_window[ex.window].append(ex)
    return by_window
