"""Is the served input what the model was trained on? Drift statistics of behaviour records.

Five quantities describe a set of records, and the same code computes them from the training
data at build time (the *reference*) and from everything Triton's ``preprocess`` has served
(the *served* values):

- events per record,
- the event-type mix: the share of each of view, cart, fav and buy among all events,
- the share of events whose item, and of events whose category, was never seen in training
  (an event without a category counts as unseen if training had none without one),
- the share of behaviour texts cut at the token limit (`ModelInputs.truncated`).

Each is a ratio of additive counts (`DriftCounts`), so a server can keep cumulative counters and
divide them (`drift_values`) at any time. The unseen shares of the training data are zero by
construction; their reference is taken from a later window (`reference_of`'s ``holdout``).

`write_reference` stores a reference as two files in a directory: `REFERENCE_FILE` (the values,
JSON) and `SEEN_IDS_FILE` (the sorted training item and category ids, gzipped JSON).

Copied into the model repository next to ``behaviour_text.py``; there its flat neighbour is
imported, never the installed build package. Standard library and numpy only.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:  # in Triton's preprocess directory: the copy beside this file
    from behaviour_text import EVENT_TYPES, EventLike
except ImportError:  # in the source tree
    from ubm_build.inputs.behaviour_text import EVENT_TYPES, EventLike

REFERENCE_FILE = "drift_reference.json"
SEEN_IDS_FILE = "drift_seen_ids.json.gz"
FORMAT_VERSION = 1
QUANTITIES = (
    "events_per_record",
    "event_type_share",
    "unseen_item_share",
    "unseen_category_share",
    "truncated_share",
)
"""The drift quantities, in the order of `DriftValues`' fields."""


class DriftReferenceError(ValueError):
    """The reference files exist but cannot be read as a reference."""


@dataclass
class DriftCounts:
    """Additive counts over a set of records; add two with ``+``."""

    records: int = 0
    events: int = 0
    events_by_type: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_TYPES, 0))
    unseen_items: int = 0
    """Events whose item is not among the training items."""
    unseen_categories: int = 0
    """Events whose category is not among the training categories."""
    truncated: int = 0
    """Records whose behaviour text has more tokens than the limit."""

    def __add__(self, other: DriftCounts) -> DriftCounts:
        return DriftCounts(
            records=self.records + other.records,
            events=self.events + other.events,
            events_by_type={
                kind: self.events_by_type[kind] + other.events_by_type[kind] for kind in EVENT_TYPES
            },
            unseen_items=self.unseen_items + other.unseen_items,
            unseen_categories=self.unseen_categories + other.unseen_categories,
            truncated=self.truncated + other.truncated,
        )


@dataclass(frozen=True)
class DriftValues:
    """The drift quantities of a set of records (all 0.0 for no records)."""

    events_per_record: float
    event_type_share: dict[str, float]
    """Share of each event type among all events; sums to 1 when there are events."""
    unseen_item_share: float
    unseen_category_share: float
    truncated_share: float

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in QUANTITIES}

    @classmethod
    def from_dict(cls, values: dict) -> DriftValues:
        return cls(
            events_per_record=float(values["events_per_record"]),
            event_type_share={
                kind: float(values["event_type_share"][kind]) for kind in EVENT_TYPES
            },
            unseen_item_share=float(values["unseen_item_share"]),
            unseen_category_share=float(values["unseen_category_share"]),
            truncated_share=float(values["truncated_share"]),
        )


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def drift_values(counts: DriftCounts) -> DriftValues:
    """The drift quantities of `counts`: per-record ratios over records, shares over events."""
    return DriftValues(
        events_per_record=_ratio(counts.events, counts.records),
        event_type_share={
            kind: _ratio(counts.events_by_type[kind], counts.events) for kind in EVENT_TYPES
        },
        unseen_item_share=_ratio(counts.unseen_items, counts.events),
        unseen_category_share=_ratio(counts.unseen_categories, counts.events),
        truncated_share=_ratio(counts.truncated, counts.records),
    )


@dataclass(frozen=True)
class SeenIds:
    """The item and category ids of the training data."""

    items: frozenset[str]
    categories: frozenset[str]

    @classmethod
    def of(cls, event_sequences: Sequence[Sequence[EventLike]]) -> SeenIds:
        return cls(
            items=frozenset(e.item for events in event_sequences for e in events),
            categories=frozenset(e.category for events in event_sequences for e in events),
        )


def count_records(
    event_sequences: Sequence[Sequence[EventLike]],
    truncated: Sequence[bool],
    seen: SeenIds | None = None,
) -> DriftCounts:
    """The counts of records given as their events, with each record's truncation flag.

    Without `seen` the unseen counts stay 0.
    """
    if len(truncated) != len(event_sequences):
        raise ValueError(f"{len(truncated)} truncation flags for {len(event_sequences)} records")
    types: Counter[str] = Counter()
    unseen_items = unseen_categories = 0
    for events in event_sequences:
        types.update(e.type for e in events)
        if seen is not None:
            unseen_items += sum(e.item not in seen.items for e in events)
            unseen_categories += sum(e.category not in seen.categories for e in events)
    return DriftCounts(
        records=len(event_sequences),
        events=sum(len(events) for events in event_sequences),
        events_by_type={kind: types[kind] for kind in EVENT_TYPES},
        unseen_items=unseen_items,
        unseen_categories=unseen_categories,
        truncated=int(sum(bool(t) for t in truncated)),
    )


@dataclass(frozen=True)
class DriftReference:
    """What the training data looks like, to compare served records against."""

    values: DriftValues
    seen: SeenIds
    max_length: int
    """The token limit the truncated share was computed for."""
    records: int
    """Training records the values come from."""
    holdout_records: int = 0
    """Records of the later window the unseen shares come from (0: none; the shares are 0)."""


def reference_of(
    event_sequences: Sequence[Sequence[EventLike]],
    truncated: Sequence[bool],
    max_length: int,
    *,
    holdout: Sequence[Sequence[EventLike]] | None = None,
) -> DriftReference:
    """The drift reference of the training records.

    Args:
        event_sequences: the training window's records, each as its events, oldest first.
        truncated: whether each record's text was cut at the token limit (`ModelInputs`).
        max_length: the model's token limit.
        holdout: records of a later window (e.g. validation). The share of their events whose
            item or category the training records lack is the unseen reference: what a model
            meets after training. Without it the unseen shares are 0.
    """
    if not event_sequences:
        raise ValueError("reference_of needs at least one training record")
    seen = SeenIds.of(event_sequences)
    values = drift_values(count_records(event_sequences, truncated))
    holdout = list(holdout or [])
    if holdout:
        unseen = drift_values(count_records(holdout, [False] * len(holdout), seen))
        values = DriftValues(
            events_per_record=values.events_per_record,
            event_type_share=values.event_type_share,
            unseen_item_share=unseen.unseen_item_share,
            unseen_category_share=unseen.unseen_category_share,
            truncated_share=values.truncated_share,
        )
    return DriftReference(
        values=values,
        seen=seen,
        max_length=max_length,
        records=len(event_sequences),
        holdout_records=len(holdout),
    )


def write_reference(directory: Path, reference: DriftReference) -> list[Path]:
    """Write `REFERENCE_FILE` and `SEEN_IDS_FILE` into `directory`; returns their paths.

    The files are byte-for-byte reproducible (sorted ids, no gzip timestamp).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    summary = {
        "format": FORMAT_VERSION,
        "max_length": reference.max_length,
        "records": reference.records,
        "holdout_records": reference.holdout_records,
        "items": len(reference.seen.items),
        "categories": len(reference.seen.categories),
        **reference.values.to_dict(),
    }
    ids = {"items": sorted(reference.seen.items), "categories": sorted(reference.seen.categories)}
    values_path = directory / REFERENCE_FILE
    ids_path = directory / SEEN_IDS_FILE
    values_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    ids_path.write_bytes(gzip.compress(json.dumps(ids, separators=(",", ":")).encode(), mtime=0))
    return [values_path, ids_path]


def read_reference(directory: Path) -> DriftReference | None:
    """The reference written into `directory`, or None if its files are not there.

    Raises:
        DriftReferenceError: a file is there but unreadable, or of another format.
    """
    directory = Path(directory)
    values_path = directory / REFERENCE_FILE
    ids_path = directory / SEEN_IDS_FILE
    if not values_path.is_file() and not ids_path.is_file():
        return None
    try:
        summary = json.loads(values_path.read_text())
        ids = json.loads(gzip.decompress(ids_path.read_bytes()))
        if summary.get("format") != FORMAT_VERSION:
            raise DriftReferenceError(f"{values_path.name}: format {summary.get('format')!r}")
        return DriftReference(
            values=DriftValues.from_dict(summary),
            seen=SeenIds(items=frozenset(ids["items"]), categories=frozenset(ids["categories"])),
            max_length=int(summary["max_length"]),
            records=int(summary["records"]),
            holdout_records=int(summary.get("holdout_records", 0)),
        )
    except DriftReferenceError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
        raise DriftReferenceError(f"cannot read the drift reference in {directory}: {e!r}") from e
