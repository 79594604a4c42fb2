"""The behaviour record: the one contract shared by the SDK, the CLI, training and the server.

A record is one JSON object::

    {"id": "u42", "events": [{"ts": 1511544070, "type": "view", "item": "9900001",
                               "category": "990011"}, ...]}

``events`` are the user's events up to the moment of prediction. Extra fields are ignored.

Error messages name the field and the rule it breaks, never the value: records are private,
and these messages end up in client output, server responses, logs and metrics. A bad value
is described only by its JSON type or its length.

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

ERROR_FIELDS = ("json", "record", "id", "events", "ts", "type", "item", "category")
"""Every value of `RecordError.field`, a short machine-readable reason (a metrics label):

- ``json``: the text is not UTF-8 or not JSON (or, in the client, cannot be encoded as JSON);
- ``record``: the JSON value is not an object;
- ``id``: the record's ``id`` is missing, empty, too long, of a wrong type or not Unicode;
- ``events``: ``events`` is not a list, is empty, is too long, holds a non-object, or the
  events cannot be turned into model inputs;
- ``ts``, ``type``, ``item``, ``category``: that field of an event is wrong.
"""


class RecordError(ValueError):
    """A record does not follow the schema; the message says which field and why.

    The message never quotes the bad value. Raised without a ``field``, the error is about the
    record as a whole (``"record"``).

    Attributes:
        field: which part of the record is wrong, one of `ERROR_FIELDS`.
    """

    def __init__(self, message: str, *, field: str = "record") -> None:
        if field not in ERROR_FIELDS:
            raise ValueError(f"field must be one of {', '.join(ERROR_FIELDS)}, got {field!r}")
        super().__init__(message)
        self.field = field

    def at_record(self, index: int) -> RecordError:
        """This error for the record at ``index`` of a batch: ``record <index>: <why>``."""
        return RecordError(f"record {index}: {self}", field=self.field)


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


_MISSING = object()
"""What `_field_of` returns for a field the JSON object does not have."""


def _field_of(raw: dict, name: str) -> Any:
    return raw.get(name, _MISSING)


def _kind(value: Any) -> str:
    """The JSON type of a bad value, for an error message; never the value itself."""
    if value is _MISSING:
        return "nothing (the field is missing)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, dict):
        return "a JSON object"
    return f"a {type(value).__name__}"


def _text_field(value: Any, where: str, *, field: str, required: bool) -> str:
    if (value is None or value is _MISSING) and not required:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError(f"{where} must be a string or integer, got {_kind(value)}", field=field)
    text = str(value)
    if required and not text:
        raise RecordError(f"{where} must not be empty", field=field)
    if len(text) > MAX_ID_CHARS:
        raise RecordError(
            f"{where} is longer than {MAX_ID_CHARS} characters ({len(text)})", field=field
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(
            f"{where} is not valid Unicode: {e.reason} at character {e.start}", field=field
        ) from e
    return text


def _timestamp(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_TS <= value < MAX_TS:
        got = "an integer outside that range" if _kind(value) == "an integer" else _kind(value)
        raise RecordError(
            f"{where} must be whole unix seconds from {MIN_TS} (2000-01-01) to before {MAX_TS}"
            f" (2100-01-01), got {got}",
            field="ts",
        )
    return value


def _parse_event(raw: Any, index: int) -> Event:
    where = f"events[{index}]"
    if not isinstance(raw, dict):
        raise RecordError(f"{where} must be an object, got {_kind(raw)}", field="events")
    ts = _timestamp(_field_of(raw, "ts"), f"{where}.ts")
    kind = _field_of(raw, "type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        got = "another string" if isinstance(kind, str) else _kind(kind)
        raise RecordError(
            f"{where}.type must be one of {', '.join(EVENT_TYPES)}, got {got}", field="type"
        )
    item = _text_field(_field_of(raw, "item"), f"{where}.item", field="item", required=True)
    category = _text_field(
        _field_of(raw, "category"), f"{where}.category", field="category", required=False
    )
    return Event(ts=ts, type=kind, item=item, category=category)


def parse_record(raw: Any) -> Record:
    """Validate a decoded JSON value and return it as a `Record` with events sorted by time.

    Raises:
        RecordError: the value is not a valid record.
    """
    if not isinstance(raw, dict):
        raise RecordError(f"a record must be a JSON object, got {_kind(raw)}", field="record")
    record_id = _text_field(_field_of(raw, "id"), "id", field="id", required=True)
    events = _field_of(raw, "events")
    if not isinstance(events, list):
        raise RecordError(f"events must be a list, got {_kind(events)}", field="events")
    if not events:
        raise RecordError("events must not be empty", field="events")
    if len(events) > MAX_EVENTS:
        raise RecordError(
            f"events has {len(events)} entries, at most {MAX_EVENTS} are accepted",
            field="events",
        )
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
        raise RecordError(f"not UTF-8 text: {e.reason} at byte {e.start}", field="json") from e
    except json.JSONDecodeError as e:
        raise RecordError(f"not valid JSON: {e.msg} at column {e.colno}", field="json") from e
    except ValueError as e:  # an integer beyond Python's digit limit for int(str)
        raise RecordError("not valid JSON: a number has too many digits", field="json") from e
    except RecursionError as e:
        raise RecordError("not valid JSON: arrays or objects nest too deeply", field="json") from e
    return parse_record(raw)


def record_id_of(raw: Any) -> str | None:
    """Best-effort id of a decoded value that may not be a valid record (for error reports)."""
    value = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    return None
