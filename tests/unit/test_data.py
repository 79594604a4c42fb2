"""The dataset: sessions, labels and time windows, on the real Taobao events."""

from ubm.records import Event
from ubm_build import data
from ubm_build.inputs.behaviour_text import SESSION_GAP_S


def test_counts_match_the_published_data(examples):
    total = sum(len(v) for v in examples.values())
    positives = sum(ex.label for v in examples.values() for ex in v)
    # README: 11,814 usable sessions, 733 with a purchase; a few dozen cross a window boundary.
    assert 11_700 <= total <= 11_814
    assert 720 <= positives <= 733
    assert {name: len(v) > 1000 for name, v in examples.items()} == dict.fromkeys(
        data.WINDOWS, True
    )


def test_no_event_at_or_after_the_prediction_point(examples):
    for window in examples.values():
        for ex in window:
            assert all(e.ts < ex.prediction_ts for e in ex.events)
            if ex.label:
                assert all(e.type != "buy" for e in ex.events[-1:])


def test_sessions_stay_inside_their_window(examples):
    for name, window in examples.items():
        start, end = data.WINDOWS[name]
        for ex in window:
            assert start <= ex.prediction_ts <= end
            assert ex.window == name


def test_windows_are_ordered_in_time(examples):
    assert max(ex.prediction_ts for ex in examples["train"]) <= min(
        ex.prediction_ts for ex in examples["valid"]
    )
    assert max(ex.prediction_ts for ex in examples["valid"]) <= min(
        ex.prediction_ts for ex in examples["test"]
    )


def _ev(ts: int, kind: str) -> Event:
    return Event(ts=data.WINDOWS["train"][0] + ts, type=kind, item="1", category="2")


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


def test_records_follow_the_schema(examples):
    from ubm.records import parse_record

    record = examples["test"][0].to_record()
    parsed = parse_record(record)
    assert parsed.events == examples["test"][0].events
    assert record["window"] == "test"
