"""The item and category snapshot against naive Python on small random event sets: counts,
lookups, features, words, the file, the clock."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from collections import defaultdict
from datetime import datetime

import numpy as np
import pytest

from ubm import records
from ubm.records import EVENT_TYPES, Event
from ubm_build.inputs import behaviour_text, snapshot
from ubm_build.inputs.behaviour_text import CHINA, MAX_TEXT_EVENTS, split_session
from ubm_build.inputs.features import feature_matrix
from ubm_build.inputs.model_inputs import unseen_counts
from ubm_build.inputs.snapshot import (
    RATE_PRIOR_EVENTS,
    SNAPSHOT_FEATURE_NAMES,
    UNSEEN_AGE_S,
    Snapshot,
    Table,
    day_start,
    id_words,
    snapshot_features,
)

AS_OF = int(datetime(2017, 12, 2, tzinfo=CHINA).timestamp())
ITEMS = ("1", "10", "100", "2", "23", "5", "70", "8", "9", "99")
"""Ids that sort differently as strings and as numbers."""
CATEGORIES = ("3", "30", "4", "44")
RawEvent = tuple[int, int, str, str, int]
"""(ts, user, item, category, type index)."""


def random_events(seed: int, n: int = 400) -> list[RawEvent]:
    """Events over the 4 days around `AS_OF`, some exactly at it."""
    rng = np.random.default_rng(seed)
    events = [
        (
            int(AS_OF + rng.integers(-3 * 86400, 86400)),
            int(rng.integers(8)),
            str(rng.choice(ITEMS)),
            str(rng.choice(CATEGORIES)),
            int(rng.integers(len(EVENT_TYPES))),
        )
        for _ in range(n)
    ]
    return [*events, (AS_OF, 0, ITEMS[0], CATEGORIES[0], 3), (AS_OF, 9, "new", "new", 0)]


def snapshot_of(events: list[RawEvent], as_of: int = AS_OF) -> Snapshot:
    if not events:
        return Snapshot.empty(as_of)
    ts, users, items, categories, types = zip(*events, strict=True)
    return Snapshot.from_events(
        as_of,
        ts=np.array(ts, dtype=np.int64),
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=str),
        categories=np.array(categories, dtype=str),
        types=np.array(types, dtype=np.int64),
    )


def naive_stats(events: list[RawEvent], column: int, as_of: int = AS_OF) -> dict[str, dict]:
    """Per id of `column` (2: items, 3: categories): counts by type, users, last ts, before
    `as_of`."""
    stats: dict[str, dict] = defaultdict(
        lambda: {"counts": [0] * len(EVENT_TYPES), "users": set(), "last_ts": 0}
    )
    for event in events:
        ts, user, kind = event[0], event[1], event[4]
        if ts >= as_of:
            continue
        row = stats[event[column]]
        row["counts"][kind] += 1
        row["users"].add(user)
        row["last_ts"] = max(row["last_ts"], ts)
    return dict(stats)


def table_as_dict(table: Table) -> dict[str, dict]:
    return {
        str(key): {"counts": counts.tolist(), "users": int(users), "last_ts": int(last)}
        for key, counts, users, last in zip(
            table.ids, table.counts, table.users, table.last_ts, strict=True
        )
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tables_count_what_happened_before_as_of(seed):
    events = random_events(seed)
    taken = snapshot_of(events)
    assert taken.as_of == AS_OF
    for table, column in ((taken.items, 2), (taken.categories, 3)):
        assert table.ids.tolist() == sorted(table.ids.tolist())
        expected = {
            key: {**row, "users": len(row["users"])}
            for key, row in naive_stats(events, column).items()
        }
        assert table_as_dict(table) == expected
    assert "new" not in taken.items.ids  # seen only at as_of
    buys = sum(1 for e in events if e[0] < AS_OF and e[4] == EVENT_TYPES.index("buy"))
    assert taken.buy_rate == pytest.approx(buys / sum(1 for e in events if e[0] < AS_OF))


def test_events_at_or_after_as_of_change_nothing(tmp_path):
    events = random_events(3)
    before = [e for e in events if e[0] < AS_OF]
    later = [(AS_OF + i * 7, 100 + i, f"a-much-longer-id-{i}", "y", i % 4) for i in range(50)]
    snapshot_of(events).save(tmp_path / "all.npz")
    for name, variant in (("before", before), ("later", events + later)):
        assert_same(snapshot_of(variant), snapshot_of(events))
        snapshot_of(variant).save(tmp_path / f"{name}.npz")
        assert (tmp_path / f"{name}.npz").read_bytes() == (tmp_path / "all.npz").read_bytes()


def assert_same(one: Snapshot, other: Snapshot) -> None:
    assert one.as_of == other.as_of
    for a, b in ((one.items, other.items), (one.categories, other.categories)):
        for field in ("ids", "counts", "users", "last_ts"):
            x, y = getattr(a, field), getattr(b, field)
            assert x.dtype == y.dtype, field
            np.testing.assert_array_equal(x, y, err_msg=field)


def test_find_gives_the_row_of_each_seen_id_and_minus_one_otherwise():
    taken = snapshot_of(random_events(4))
    table = taken.items
    seen = table.ids.tolist()
    queries = [*seen[::-1], "", "0", "00", "zzz", "~", "11", "new"]  # before, between, after
    rows = table.find(np.array(queries, dtype=str))
    assert rows.tolist() == [seen.index(q) if q in seen else -1 for q in queries]
    assert table.find(np.array([], dtype=str)).tolist() == []
    empty = Snapshot.empty(AS_OF)
    assert empty.items.find(np.array(["1", "", "zzz"], dtype=str)).tolist() == [-1, -1, -1]
    assert empty.buy_rate == 0.0


def naive_features(events: list[RawEvent], sequence: list[Event]) -> dict[str, float]:
    """`SNAPSHOT_FEATURE_NAMES` of one record, id by id in plain Python from the raw events."""
    counted = [e for e in events if e[0] < AS_OF]
    overall = sum(e[4] == EVENT_TYPES.index("buy") for e in counted) / len(counted)
    tables = {"item": naive_stats(events, 2), "category": naive_stats(events, 3)}

    def look(kind: str, key: str) -> dict:
        row = tables[kind].get(key)
        n = sum(row["counts"]) if row else 0
        buys = row["counts"][EVENT_TYPES.index("buy")] if row else 0
        prior = RATE_PRIOR_EVENTS[kind]
        return {
            "unseen": float(row is None),
            "events": n,
            "buys": buys,
            "users": len(row["users"]) if row else 0,
            "rate": (buys + prior * overall) / (n + prior),
            "age": min(AS_OF - row["last_ts"], UNSEEN_AGE_S) if row else UNSEEN_AGE_S,
        }

    session = split_session(sequence)[1]
    items = [look("item", key) for key in dict.fromkeys(e.item for e in session)]
    categories = [look("category", key) for key in dict.fromkeys(e.category for e in session)]
    item, category = look("item", sequence[-1].item), look("category", sequence[-1].category)
    log = math.log1p
    return {
        "last_item_events": log(item["events"]),
        "last_item_buys": log(item["buys"]),
        "last_item_users": log(item["users"]),
        "last_item_buy_rate": item["rate"],
        "last_item_age_s": log(item["age"]),
        "last_item_unseen": item["unseen"],
        "last_category_events": log(category["events"]),
        "last_category_users": log(category["users"]),
        "last_category_buy_rate": category["rate"],
        "last_category_unseen": category["unseen"],
        "session_items_events_mean": sum(log(i["events"]) for i in items) / len(items),
        "session_items_buys_max": log(max(i["buys"] for i in items)),
        "session_items_buy_rate_max": max(i["rate"] for i in items),
        "session_items_unseen_share": sum(i["unseen"] for i in items) / len(items),
        "session_categories_buy_rate_max": max(c["rate"] for c in categories),
    }


def random_sequences(seed: int, n: int = 40) -> list[list[Event]]:
    """Records of 1 to 12 events before `AS_OF`, with session pauses, on seen and unseen ids."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(n):
        ts = AS_OF - int(rng.integers(3600, 86400))
        events = []
        for _ in range(int(rng.integers(1, 13))):
            events.append(
                Event(
                    ts=ts,
                    type=str(rng.choice(EVENT_TYPES)),
                    item=str(rng.choice([*ITEMS, "unseen-a", "unseen-b"])),
                    category=str(rng.choice([*CATEGORIES, "unseen"])),
                )
            )
            ts += int(rng.choice([30, 600, 3600]))  # 3600: a new session
        sequences.append(events)
    return sequences


@pytest.mark.parametrize("seed", [0, 1])
def test_features_equal_a_naive_per_record_computation(seed):
    events = random_events(seed)
    sequences = random_sequences(seed)
    matrix = snapshot_features(snapshot_of(events), sequences)
    assert matrix.dtype == np.float32
    assert matrix.shape == (len(sequences), len(SNAPSHOT_FEATURE_NAMES))
    for row, sequence in zip(matrix, sequences, strict=True):
        expected = naive_features(events, sequence)
        assert dict(zip(SNAPSHOT_FEATURE_NAMES, row.tolist(), strict=True)) == pytest.approx(
            expected, rel=1e-5, abs=1e-6
        )
    # Each record is read alone as in the batch.
    alone = np.vstack([snapshot_features(snapshot_of(events), [s]) for s in sequences[:5]])
    np.testing.assert_array_equal(alone, matrix[:5])


def test_unseen_ids_have_explicit_values():
    taken = snapshot_of(random_events(5))
    sequence = [Event(AS_OF - 60, "view", "never", "nowhere")]
    values = dict(
        zip(SNAPSHOT_FEATURE_NAMES, snapshot_features(taken, [sequence])[0].tolist(), strict=True)
    )
    for name in (
        "last_item_events",
        "last_item_buys",
        "last_item_users",
        "last_category_events",
        "last_category_users",
        "session_items_events_mean",
        "session_items_buys_max",
    ):
        assert values[name] == 0.0, name
    assert values["last_item_age_s"] == pytest.approx(math.log1p(UNSEEN_AGE_S))
    for name in ("last_item_unseen", "last_category_unseen", "session_items_unseen_share"):
        assert values[name] == 1.0, name
    for name in (
        "last_item_buy_rate",
        "last_category_buy_rate",
        "session_items_buy_rate_max",
        "session_categories_buy_rate_max",
    ):
        assert values[name] == pytest.approx(taken.buy_rate), name  # the prior alone
    empty = snapshot_features(Snapshot.empty(AS_OF), [sequence])
    assert np.isfinite(empty).all()
    assert snapshot_features(taken, []).shape == (0, len(SNAPSHOT_FEATURE_NAMES))


def test_unseen_counts_count_records_by_their_last_event():
    taken = snapshot_of(random_events(6))
    sequences = [
        [Event(AS_OF - 60, "view", ITEMS[0], CATEGORIES[0])],
        [Event(AS_OF - 60, "view", "never", CATEGORIES[0])],
        [Event(AS_OF - 60, "view", "never", "nowhere")],
        [Event(AS_OF - 90, "view", "never", "nowhere"), Event(AS_OF - 60, "view", ITEMS[1], "4")],
    ]
    features = np.hstack([feature_matrix(sequences), snapshot_features(taken, sequences)])
    assert unseen_counts(features) == (2, 1)  # read from a batch's whole feature matrix


def test_save_and_load_give_the_same_arrays_and_bytes(tmp_path):
    taken = snapshot_of(random_events(7))
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    taken.save(first)
    loaded = Snapshot.load(first)
    assert_same(loaded, taken)
    loaded.save(second)
    assert first.read_bytes() == second.read_bytes()
    metadata = taken.metadata(first)
    assert metadata == {
        "snapshot_as_of": str(AS_OF),
        "snapshot_items": str(len(taken.items.ids)),
        "snapshot_categories": str(len(taken.categories.ids)),
        "snapshot_sha256": hashlib.sha256(first.read_bytes()).hexdigest(),
    }
    assert loaded.metadata(second)["snapshot_sha256"] == metadata["snapshot_sha256"]
    empty = tmp_path / "empty.npz"
    Snapshot.empty(AS_OF).save(empty)
    assert_same(Snapshot.load(empty), Snapshot.empty(AS_OF))


def test_a_file_that_is_no_snapshot_is_refused(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a ubm snapshot"):
        Snapshot.load(other)
    future = tmp_path / "future.npz"
    np.savez(future, format_version=np.int64(snapshot.FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="not a ubm snapshot"):
        Snapshot.load(future)


def words_snapshot() -> Snapshot:
    """Items: "rare" (1 view), "popular" (3 views), "rare-bought" (1 buy), "popular-bought";
    categories against an overall buy rate of 1/6: "cold" (no buys in 2000), "hot" (half of
    1000 bought), "warm" (100 of 600 bought: exactly the overall rate)."""
    view, buy = EVENT_TYPES.index("view"), EVENT_TYPES.index("buy")
    events: list[RawEvent] = []

    def add(item: str, category: str, views: int, buys: int) -> None:
        ts = AS_OF - 3600
        events.extend((ts, 0, item, category, view) for _ in range(views))
        events.extend((ts, 0, item, category, buy) for _ in range(buys))

    add("rare", "cold", 1, 0)
    add("popular", "cold", 3, 0)
    add("cold-filler", "cold", 1996, 0)
    add("rare-bought", "hot", 0, 1)
    add("popular-bought", "hot", 2, 2)
    add("hot-filler", "hot", 498, 497)
    add("warm-filler", "warm", 500, 100)
    return snapshot_of(events)


def test_id_words_name_what_the_snapshot_knows():
    taken = words_snapshot()
    assert taken.buy_rate == pytest.approx(1 / 6)
    cases = [
        ("never", "nowhere", ("new", "new")),
        ("rare", "cold", ("rare", "cold")),
        ("popular", "warm", ("popular", "warm")),
        ("rare-bought", "hot", ("rare bought", "hot")),
        ("popular-bought", "cold", ("popular bought", "cold")),
    ]
    sequence = [
        Event(AS_OF + i, "view", item, category) for i, (item, category, _) in enumerate(cases)
    ]
    assert id_words(taken, [sequence, sequence[:1]]) == [
        [words for *_, words in cases],
        [cases[0][2]],
    ]
    assert id_words(taken, []) == []


def test_id_words_cover_the_rendered_events_only():
    taken = words_snapshot()
    long = [Event(AS_OF + i, "view", "rare" if i % 2 else "never", "cold") for i in range(80)]
    (words,) = id_words(taken, [long])
    assert len(words) == MAX_TEXT_EVENTS
    assert words[-1] == ("rare", "cold") and words[-2] == ("new", "cold")  # newest last
    text = behaviour_text.behaviour_text(long, id_words=words)
    assert "item rare rare cat cold cold" in text and "item never new cat cold cold" in text


@pytest.mark.parametrize(
    ("moment", "start"),
    [
        (datetime(2017, 12, 2, 0, 0, tzinfo=CHINA), datetime(2017, 12, 2, tzinfo=CHINA)),
        (datetime(2017, 12, 2, 7, 59, tzinfo=CHINA), datetime(2017, 12, 2, tzinfo=CHINA)),
        (datetime(2017, 12, 2, 23, 59, 59, tzinfo=CHINA), datetime(2017, 12, 2, tzinfo=CHINA)),
        (datetime(2017, 12, 1, 23, 59, 59, tzinfo=CHINA), datetime(2017, 12, 1, tzinfo=CHINA)),
    ],
)
def test_day_start_is_midnight_in_china(moment, start):
    offset = 8 * 3600
    assert day_start(int(moment.timestamp()), offset) == int(start.timestamp())
    # 16:00 UTC is already the next day in China.
    utc_afternoon = int(datetime.fromisoformat("2017-12-01T16:00:00+00:00").timestamp())
    assert day_start(utc_afternoon, offset) == int(datetime(2017, 12, 2, tzinfo=CHINA).timestamp())


def test_runs_from_a_flat_directory_next_to_behaviour_text(tmp_path):
    """As in Triton's preprocess directory: no ubm or ubm_build package, the snapshot file
    loaded and looked up beside the modules it imports."""
    taken = snapshot_of(random_events(8))
    taken.save(tmp_path / snapshot.FILE)
    sequences = random_sequences(8, n=5)
    for module in (snapshot, behaviour_text, records):
        shutil.copy2(module.__file__, tmp_path)
    rows = [[(e.ts, e.type, e.item, e.category) for e in s] for s in sequences]
    script = (
        "import json, sys; sys.modules['ubm_build'] = sys.modules['ubm'] = None\n"
        "from collections import namedtuple\n"
        "from pathlib import Path\n"
        "import snapshot\n"
        "E = namedtuple('E', 'ts type item category')\n"
        f"rows = [[E(*e) for e in s] for s in {rows}]\n"
        "taken = snapshot.Snapshot.load(Path(snapshot.FILE))\n"
        "print(json.dumps(snapshot.snapshot_features(taken, rows).tolist()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    np.testing.assert_array_equal(
        np.array(json.loads(out), dtype=np.float32), snapshot_features(taken, sequences)
    )
