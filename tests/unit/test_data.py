"""The dataset: sessions, labels and time windows, on hand-made events and a tiny CSV.

The same rules on the whole Taobao CSV: tests/integration/test_real_examples.py.
"""

from pathlib import Path

from ubm.records import Event, parse_record
from ubm_build import data
from ubm_build.inputs.behaviour_text import SESSION_GAP_S

TRAIN, VALID, TEST = (data.WINDOWS[name][0] for name in ("train", "valid", "test"))
T = TRAIN + 10 * 3600  # a train-window session
V = VALID + 10 * 3600  # a valid-window session
S = TEST + 3600  # a test-window session, an hour after one that crosses into the test day
TINY_CSV = [  # user, item, category, behaviour, ts; out of time order, as a log may be
    ("2", "20", "200", "pv", S),
    ("1", "11", "100", "fav", V + 300),
    ("1", "10", "100", "buy", T + 120),
    ("1", "9", "90", "pv", TRAIN - 100),  # before the data window: dropped
    ("2", "21", "200", "pv", TEST - 60),  # this session crosses the valid/test boundary
    ("1", "10", "100", "pv", T),
    ("2", "21", "200", "pv", TEST + 60),
    ("1", "11", "100", "pv", V),
    ("1", "10", "100", "cart", T + 60),
    ("2", "20", "200", "buy", S + 30),
]
USER_1 = [
    Event(T, "view", "10", "100"),
    Event(T + 60, "cart", "10", "100"),
    Event(T + 120, "buy", "10", "100"),
    Event(V, "view", "11", "100"),
    Event(V + 300, "fav", "11", "100"),
]
USER_2 = [
    Event(TEST - 60, "view", "21", "200"),
    Event(TEST + 60, "view", "21", "200"),
    Event(S, "view", "20", "200"),
    Event(S + 30, "buy", "20", "200"),
]


def write_csv(path: Path, rows: list[tuple[str, str, str, str, int]]) -> Path:
    path.write_text("".join(",".join(map(str, row)) + "\n" for row in rows))
    return path


def test_read_events_orders_each_users_events_and_drops_those_before_the_data(tmp_path):
    assert data.read_events(write_csv(tmp_path / "events.csv", TINY_CSV)) == {
        "1": USER_1,
        "2": USER_2,
    }


def test_examples_by_window_gives_one_example_per_session_in_its_window(tmp_path):
    by_window = data.examples_by_window(write_csv(tmp_path / "events.csv", TINY_CSV))
    assert by_window == {
        "train": [data.Example("1", tuple(USER_1[:2]), 1, "train", T + 120)],
        # history (the train session, its purchase included), then the session: no purchase
        "valid": [data.Example("1", tuple(USER_1), 0, "valid", V + 301)],
        # the boundary session gives no example but is history; the purchase is not seen
        "test": [data.Example("2", tuple(USER_2[:3]), 1, "test", S + 30)],
    }
    for name, window in by_window.items():
        start, end = data.WINDOWS[name]
        for ex in window:
            assert start <= ex.prediction_ts <= end
            assert all(e.ts < ex.prediction_ts for e in ex.events)


def _ev(ts: int, kind: str) -> Event:
    return Event(ts=TRAIN + ts, type=kind, item="1", category="2")


def test_labels_and_cut_at_first_purchase():
    gap = SESSION_GAP_S + 1
    events = [
        _ev(0, "view"),
        _ev(10, "cart"),
        _ev(20, "buy"),
        _ev(30, "view"),  # positive
        _ev(30 + gap, "buy"),
        _ev(40 + gap, "view"),  # starts with buy: none
        _ev(40 + 2 * gap, "view"),
        _ev(50 + 2 * gap, "buy"),
        _ev(50 + 2 * gap, "view"),  # same second
        _ev(60 + 3 * gap, "view"),  # negative
    ]
    exs = list(data.user_examples("u", events, history_cap=2))
    assert [ex.label for ex in exs] == [1, 1, 0]
    assert [e.type for e in exs[0].events] == ["view", "cart"]
    # history (capped at 2) then the events strictly before the purchase second
    assert [e.ts - events[0].ts for e in exs[1].events] == [30 + gap, 40 + gap, 40 + 2 * gap]
    assert exs[2].prediction_ts == events[-1].ts + 1
    assert len(exs[2].events) == 3


def test_session_crossing_a_window_boundary_is_dropped():
    boundary = data.WINDOWS["valid"][0]
    events = [
        Event(ts=boundary - 60, type="view", item="1"),
        Event(ts=boundary + 60, type="buy", item="1"),
    ]
    assert list(data.user_examples("u", events)) == []


def test_records_follow_the_schema():
    events = (Event(S, "view", "20", "200"), Event(S + 10, "cart", "20", ""))
    example = data.Example("2", events, 1, "test", S + 30)
    record = example.to_record()
    assert record == {
        "id": f"u2-{S + 30}",
        "events": [
            {"ts": S, "type": "view", "item": "20", "category": "200"},
            {"ts": S + 10, "type": "cart", "item": "20", "category": ""},
        ],
        "label": 1,
        "window": "test",
    }
    assert parse_record(record).events == events
