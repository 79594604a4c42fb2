"""Hand-made features of one behaviour record, computed from its events alone.

No global tables (item and category knowledge is `snapshot.py`'s): the same function runs in
training and inside Triton's ``preprocess`` model, where this file is copied next to
``behaviour_text.py``. It imports only the standard library, numpy and ``behaviour_text`` (the
session cut, the event types, the clock).

Counts and durations are ``log1p``-scaled and the clock is encoded as sin/cos, so every feature
is of order one and a neural head can take the vector as it is.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from itertools import pairwise

import numpy as np

try:  # in Triton's preprocess directory: the copy beside this file, not the installed package
    from behaviour_text import CHINA, EVENT_TYPES, EventLike, split_session
except ImportError:  # in the source tree
    from ubm_build.inputs.behaviour_text import CHINA, EVENT_TYPES, EventLike, split_session

_INTENT = frozenset({"cart", "fav"})

SESSION_FEATURE_NAMES: tuple[str, ...] = (
    # the current session (events since the last 30-minute pause)
    "session_events",
    *(f"session_{kind}" for kind in EVENT_TYPES),
    "session_distinct_items",
    "session_distinct_categories",
    "session_duration_s",
    "session_mean_gap_s",
    "last_gap_s",
    "last_is_cart",
    "last_is_fav",
    "last_item_session_events",
    "last_category_session_share",
    # the clock at the last event
    "hour_sin",
    "hour_cos",
    "weekday_sin",
    "weekday_cos",
    # the user's earlier history
    "history_events",
    *(f"history_{kind}" for kind in EVENT_TYPES),
    "since_history_s",
    # the session against what came before it
    "session_items_seen_in_history",
    "intent_items_revisited",
    "last_item_intent_before",
    "last_item_bought_in_history",
    "last_category_bought_in_history",
)
"""Column order of `session_features`; ``*_s`` and count features are ``log1p``-scaled."""


def session_features(events: Sequence[EventLike]) -> np.ndarray:
    """Feature vector (float32, ``len(SESSION_FEATURE_NAMES)``) of time-ordered events, oldest
    first.

    Raises:
        ValueError: `events` is empty.
    """
    if not events:
        raise ValueError("session_features needs at least one event")
    history, session = split_session(events)
    last = session[-1]
    log = math.log1p
    session_types = Counter(e.type for e in session)
    history_types = Counter(e.type for e in history)
    history_items = {e.item for e in history}
    gaps = [b.ts - a.ts for a, b in pairwise(session)]

    # Session events on an item carted or faved before (in history or earlier in the session).
    intent_items: set[str] = set()
    revisits = 0
    for i, event in enumerate(events):
        revisits += i >= len(history) and event.item in intent_items
        if event.type in _INTENT:
            intent_items.add(event.item)
    intent_before = {e.item for e in events[:-1] if e.type in _INTENT}

    clock = datetime.fromtimestamp(last.ts, CHINA)
    hour = 2 * math.pi * (clock.hour + clock.minute / 60) / 24
    weekday = 2 * math.pi * clock.weekday() / 7
    history_buys = [e for e in history if e.type == "buy"]
    values = {
        "session_events": log(len(session)),
        **{f"session_{kind}": log(session_types[kind]) for kind in EVENT_TYPES},
        "session_distinct_items": log(len({e.item for e in session})),
        "session_distinct_categories": log(len({e.category for e in session})),
        "session_duration_s": log(last.ts - session[0].ts),
        "session_mean_gap_s": log(sum(gaps) / len(gaps)) if gaps else 0.0,
        "last_gap_s": log(gaps[-1]) if gaps else 0.0,
        "last_is_cart": float(last.type == "cart"),
        "last_is_fav": float(last.type == "fav"),
        "last_item_session_events": log(sum(e.item == last.item for e in session)),
        "last_category_session_share": sum(e.category == last.category for e in session)
        / len(session),
        "hour_sin": math.sin(hour),
        "hour_cos": math.cos(hour),
        "weekday_sin": math.sin(weekday),
        "weekday_cos": math.cos(weekday),
        "history_events": log(len(history)),
        **{f"history_{kind}": log(history_types[kind]) for kind in EVENT_TYPES},
        "since_history_s": log(session[0].ts - history[-1].ts) if history else 0.0,
        "session_items_seen_in_history": log(len({e.item for e in session} & history_items)),
        "intent_items_revisited": log(revisits),
        "last_item_intent_before": float(last.item in intent_before),
        "last_item_bought_in_history": float(any(e.item == last.item for e in history_buys)),
        "last_category_bought_in_history": float(
            any(e.category == last.category for e in history_buys)
        ),
    }
    return np.array([values[name] for name in SESSION_FEATURE_NAMES], dtype=np.float32)


def feature_matrix(sequences: Sequence[Sequence[EventLike]]) -> np.ndarray:
    """`session_features` of each event sequence, stacked into a float32 [n, F] matrix."""
    matrix = np.zeros((len(sequences), len(SESSION_FEATURE_NAMES)), dtype=np.float32)
    for row, events in enumerate(sequences):
        matrix[row] = session_features(events)
    return matrix
