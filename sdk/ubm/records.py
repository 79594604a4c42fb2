"""The behaviour record: the one contract shared by the SDK, the CLI, training and the server.

A record is one JSON object::

    {"id": "u42", "events": [{"ts": 1511544070, "type": "view", "item": "2268318",
                               "category": "2520377"}, ...]}

``events`` are the user's events up to the moment of prediction. Extra fields are ignored.

This module imports only the standard library: the build copies it next to the Triton
``preprocess`` model so the server validates with exactly the same rules and messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

EVENT_TYPES = ("view", "cart", "fav", "buy")
MAX_EVENTS = 5000
"""Records with more events are rejected; the model only ever reads the newest few dozen."""
MAX_ID_CHARS = 256
MIN_TS = 946_684_800
"""2000-01-01 00:00:00 UTC, the earliest accepted event time (unix seconds)."""
MAX_TS = 4_102_444_800
"""2100-01-01 00:00:00 UTC: event times must be before it. Milliseconds fall outside the range."""
PREVIEW_CHARS = 40
"""Error messages quote at most this much of a bad value, so they never echo a record back."""


class RecordError(ValueError):
    """A record does not follow the schema; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class Event:
    ts: int
    type: str
    item: str
    category: str = ""


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    events: tuple[Event, ...]
    """Sorted oldest first (the input order is not trusted)."""


def preview(value: Any) -> str:
    """A short description of a bad value for an error message: never the whole value.

    Strings and numbers are quoted up to `PREVIEW_CHARS` characters; anything else (objects,
    lists) is named by its type only, since it may hold data that must not be echoed.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
        if len(text) > PREVIEW_CHARS:
            return f"{text[:PREVIEW_CHARS]}... ({len(text)} characters)"
        return text
    return f"a JSON {_json_type(value)}"


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array"}.get(type(value), type(value).__name__)


def _text_field(value: Any, where: str, *, required: bool) -> str:
    if value is None and not required:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError(f"{where} must be a string or integer, got {preview(value)}")
    text = str(value)
    if required and not text:
        raise RecordError(f"{where} must not be empty")
    if len(text) > MAX_ID_CHARS:
        raise RecordError(f"{where} is longer than {MAX_ID_CHARS} characters ({len(text)})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(f"{where} is not valid Unicode: {e.reason} at character {e.start}") from e
    return text


def _timestamp(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_TS <= value < MAX_TS:
        raise RecordError(
            f"{where} must be whole unix seconds from {MIN_TS} (2000-01-01) to before {MAX_TS}"
            f" (2100-01-01), got {preview(value)}"
        )
    return value


def _parse_event(raw: Any, index: int) -> Event:
    where = f"events[{index}]"
    if not isinstance(raw, dict):
        raise RecordError(f"{where} must be an object, got {preview(raw)}")
    ts = _timestamp(raw.get("ts"), f"{where}.ts")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise RecordError(
            f"{where}.type must be one of {', '.join(EVENT_TYPES)}, got {preview(kind)}"
        )
    item = _text_field(raw.get("item"), f"{where}.item", required=True)
    category = _text_field(raw.get("category"), f"{where}.category", required=False)
    return Event(ts=ts, type=kind, item=item, category=category)


def parse_record(raw: Any) -> Record:
    """Validate a decoded JSON value and return it as a `Record` with events sorted by time.

    Raises:
        RecordError: the value is not a valid record.
    """
    if not isinstance(raw, dict):
        raise RecordError(f"a record must be a JSON object, got {preview(raw)}")
    record_id = _text_field(raw.get("id"), "id", required=True)
    events = raw.get("events")
    if not isinstance(events, list):
        raise RecordError(f"events must be a list, got {preview(events)}")
    if not events:
        raise RecordError("events must not be empty")
    if len(events) > MAX_EVENTS:
        raise RecordError(f"events has {len(events)} entries, at most {MAX_EVENTS} are accepted")
    parsed = sorted((_parse_event(event, i) for i, event in enumerate(events)), key=lambda e: e.ts)
    return Record(id=record_id, events=tuple(parsed))


def parse_record_json(text: str | bytes) -> Record:
    """Decode one JSON document and validate it as a record.

    Raises:
        RecordError: not UTF-8, not JSON, or not a valid record.
    """
    try:
        raw = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as e:
        raise RecordError(f"not UTF-8 text: {e.reason} at byte {e.start}") from e
    except json.JSONDecodeError as e:
        raise RecordError(f"not valid JSON: {e.msg} at column {e.colno}") from e
    return parse_record(raw)


def record_id_of(raw: Any) -> str | None:
    """Best-effort id of a decoded value that may not be a valid record (for error reports)."""
    value = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    return None
