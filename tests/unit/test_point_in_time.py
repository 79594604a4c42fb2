"""Point-in-time inputs on a synthetic event log: each example reads the snapshot of its own
(China) day, and nothing at or after its prediction time."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from ubm.records import EVENT_TYPES, Event
from ubm_build.data import CHINA, Example, user_examples
from ubm_build.data.point_in_time import (
    CHINA_OFFSET_S,
    DailySnapshots,
    EventLog,
    point_in_time_inputs,
    point_in_time_texts,
    snapshot_time,
)
from ubm_build.inputs.behaviour_text import behaviour_text
from ubm_build.inputs.model_inputs import RecordReader
from ubm_build.inputs.snapshot import Snapshot, id_words

MAX_LENGTH = 64
DAYS = [int(datetime(2017, 11, d, tzinfo=CHINA).timestamp()) for d in (28, 29, 30)]
"""China midnights of the synthetic log's days (the train window)."""
ITEMS = [f"i{n}" for n in range(12)]


def synthetic_log(seed: int = 0, users: int = 6) -> dict[str, list[Event]]:
    """Each user's sessions on each day: a few minutes of events, some ending in a purchase,
    one user's long enough to be cut at the token limit."""
    rng = np.random.default_rng(seed)
    by_user = {}
    for user in range(users):
        events = []
        for day in DAYS:
            for hour in sorted(rng.choice(24, size=2, replace=False)):
                ts = day + int(hour) * 3600 + int(rng.integers(0, 600))
                length = 40 if user == 0 and day == DAYS[1] else int(rng.integers(2, 7))
                for _ in range(length):
                    item = str(rng.choice(ITEMS))
                    kind = str(rng.choice(EVENT_TYPES, p=[0.7, 0.1, 0.1, 0.1]))
                    events.append(Event(ts, kind, item, f"c{int(item[1:]) % 4}"))
                    ts += int(rng.integers(10, 300))
        by_user[str(user)] = events
    return by_user


def examples_of(by_user: dict[str, list[Event]]) -> list[Example]:
    """Every session example of the log, days interleaved (the order must be kept)."""
    made = [ex for user, events in by_user.items() for ex in user_examples(user, events)]
    return [made[i] for i in np.random.default_rng(1).permutation(len(made))]


@pytest.fixture(scope="module")
def by_user() -> dict[str, list[Event]]:
    return synthetic_log()


@pytest.fixture(scope="module")
def made_examples(by_user) -> list[Example]:
    return examples_of(by_user)


@pytest.fixture(scope="module")
def reader(tokenizer) -> RecordReader:
    return RecordReader(tokenizer, MAX_LENGTH, Snapshot.empty(), snapshot_words=True)


def example(*times: int, prediction_ts: int) -> Example:
    return Example("u", tuple(Event(ts, "view", "i1", "c1") for ts in times), 0, "", prediction_ts)


def china(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(2017, 11, day, hour, minute, second, tzinfo=CHINA).timestamp())


@pytest.mark.parametrize(
    ("times", "prediction_ts", "expected"),
    [
        ((china(28, 9),), china(28, 9, 5), china(28)),
        ((china(28, 9), china(28, 23, 59, 59)), china(29, 0, 10), china(28)),  # its last event
        ((china(27, 23, 50), china(28, 0, 0)), china(28, 0, 1), china(28)),  # at midnight
        ((china(28, 7, 59),), china(28, 8), china(28)),  # 23:59 UTC of the 27th
    ],
)
def test_the_snapshot_is_as_of_the_start_of_the_last_events_china_day(
    times, prediction_ts, expected
):
    assert CHINA_OFFSET_S == 8 * 3600
    assert snapshot_time(example(*times, prediction_ts=prediction_ts)) == expected


def test_the_log_holds_every_event_as_arrays(by_user):
    log = EventLog.from_users(by_user)
    flat = [(user, e) for user, events in by_user.items() for e in events]
    assert log.ts.tolist() == [e.ts for _, e in flat]
    assert log.items.tolist() == [e.item for _, e in flat]
    assert log.categories.tolist() == [e.category for _, e in flat]
    assert [EVENT_TYPES[t] for t in log.types] == [e.type for _, e in flat]
    assert log.users.tolist() == [list(by_user).index(user) for user, _ in flat]


def test_each_example_reads_its_own_days_snapshot_in_order(by_user, made_examples, reader):
    log = EventLog.from_users(by_user)
    snapshots = DailySnapshots(log)
    inputs = point_in_time_inputs(reader, made_examples, snapshots)
    days = {snapshot_time(ex) for ex in made_examples}
    assert days == set(DAYS)
    assert set(snapshots.by_day) == days  # one snapshot per day, computed once
    assert (
        inputs.ids.shape[0]
        == inputs.mask.shape[0]
        == inputs.features.shape[0]
        == len(made_examples)
    )
    assert inputs.truncated.any() and not inputs.truncated.all()
    pad = reader.tokenizer.token_to_id("[PAD]")
    widths = set()
    for row, ex in enumerate(made_examples):
        alone = reader.at(log.snapshot(snapshot_time(ex)))([ex.events])
        n = alone.mask.shape[1]
        widths.add(n)
        np.testing.assert_array_equal(inputs.ids[row, :n], alone.ids[0], err_msg=ex.id)
        np.testing.assert_array_equal(inputs.mask[row, :n], alone.mask[0], err_msg=ex.id)
        assert (inputs.ids[row, n:] == pad).all() and not inputs.mask[row, n:].any(), ex.id
        np.testing.assert_array_equal(inputs.features[row], alone.features[0], err_msg=ex.id)
        assert inputs.truncated[row] == alone.truncated[0], ex.id
    assert len(widths) > 1  # days of different widths, padded to the widest


def test_no_example_reads_an_event_at_or_after_its_prediction_time(by_user, made_examples, reader):
    """The log gets events on the example's own items and categories at its prediction time
    and after it: its inputs stay the same. Moved to just before its snapshot's time, the same
    events do change them (they are not events the snapshot ignores anyway)."""
    baseline = point_in_time_inputs(
        reader, made_examples, DailySnapshots(EventLog.from_users(by_user))
    )
    for row, ex in enumerate(made_examples):

        def extra(times: list[int], ex: Example = ex) -> list[Event]:
            return [
                Event(ts, kind, e.item, e.category)
                for ts in times
                for e in ex.events[-3:]
                for kind in ("buy", "view")
            ]

        late = extra([ex.prediction_ts, ex.prediction_ts + 1, ex.prediction_ts + 86400])
        log = EventLog.from_users({**by_user, "late": late})
        inputs = point_in_time_inputs(reader, [ex], DailySnapshots(log))
        np.testing.assert_array_equal(inputs.features[0], baseline.features[row], err_msg=ex.id)
        n = int(baseline.mask[row].sum())
        np.testing.assert_array_equal(inputs.ids[0, :n], baseline.ids[row, :n], err_msg=ex.id)

        early = EventLog.from_users({**by_user, "early": extra([snapshot_time(ex) - 1])})
        moved = point_in_time_inputs(reader, [ex], DailySnapshots(early))
        assert not np.array_equal(moved.features[0], baseline.features[row]), ex.id


@pytest.mark.parametrize("snapshot_words", [False, True])
def test_texts_are_rendered_with_each_examples_own_day(by_user, made_examples, snapshot_words):
    log = EventLog.from_users(by_user)
    texts = point_in_time_texts(
        made_examples, DailySnapshots(log), snapshot_words=snapshot_words, words=30
    )
    for text, ex in zip(texts, made_examples, strict=True):
        words = id_words(log.snapshot(snapshot_time(ex)), [ex.events])[0]
        expected = behaviour_text(
            ex.events, max_words=30, id_words=words if snapshot_words else None
        )
        assert text == expected, ex.id
