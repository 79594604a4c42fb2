import pytest

from ubm.records import MAX_EVENTS, RecordError, parse_record, parse_record_json, record_id_of

T0 = 1512172800  # 2017-12-02 00:00 UTC
EVENT = {"ts": T0, "type": "view", "item": "7", "category": "3"}


def test_valid_record_is_sorted_by_time_and_extra_fields_are_ignored():
    record = parse_record(
        {
            "id": "u1",
            "label": 1,
            "events": [{**EVENT, "ts": T0 + 100, "type": "cart", "x": 1}, EVENT],
        }
    )
    assert record.id == "u1"
    assert [e.ts for e in record.events] == [T0, T0 + 100]
    assert record.events[1].type == "cart"


def test_integer_ids_and_missing_category_are_accepted():
    record = parse_record({"id": 5, "events": [{"ts": T0, "type": "buy", "item": 9}]})
    assert record.id == "5"
    assert record.events[0].item == "9"
    assert record.events[0].category == ""


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "a record must be a JSON object"),
        ({"events": [EVENT]}, "id must be a string or integer"),
        ({"id": "", "events": [EVENT]}, "id must not be empty"),
        ({"id": "a"}, "events must be a list"),
        ({"id": "a", "events": []}, "events must not be empty"),
        ({"id": "a", "events": [3]}, "events[0] must be an object"),
        (
            {"id": "a", "events": [{**EVENT, "ts": "100"}]},
            "events[0].ts must be whole unix seconds",
        ),
        ({"id": "a", "events": [{**EVENT, "ts": True}]}, "events[0].ts must be whole unix seconds"),
        (
            {"id": "a", "events": [EVENT, {**EVENT, "type": "click"}]},
            "events[1].type must be one of",
        ),
        ({"id": "a", "events": [{"ts": T0, "type": "view"}]}, "events[0].item must be a string"),
        ({"id": "a", "events": [{**EVENT, "category": 1.5}]}, "events[0].category must be"),
        ({"id": "a", "events": [EVENT] * (MAX_EVENTS + 1)}, "at most"),
    ],
)
def test_invalid_records_name_the_field(raw, message):
    with pytest.raises(RecordError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_record(raw)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("", "not valid JSON"),
    ],
)
def test_undecodable_text(text, message):
    with pytest.raises(RecordError, match=message):
        parse_record_json(text)


def test_record_id_of_is_best_effort():
    assert record_id_of({"id": 3}) == "3"
    assert record_id_of({"id": ["x"]}) is None
    assert record_id_of("x") is None


@pytest.mark.parametrize(
    "ts",
    [T0 * 1000, 253402300800, 2**62, -2 * 10**9, 10**30, 0, 946684799, 4102444800, 1.5e9, None],
)
def test_event_times_outside_2000_to_2100_are_refused_with_the_range(ts):
    with pytest.raises(RecordError, match=r"events\[0\]\.ts must be whole unix seconds from"):
        parse_record({"id": "a", "events": [{**EVENT, "ts": ts}]})


def test_the_range_ends_are_unix_seconds_of_2000_and_2100():
    assert parse_record({"id": "a", "events": [{**EVENT, "ts": 946684800}]})
    assert parse_record({"id": "a", "events": [{**EVENT, "ts": 4102444799}]})


def test_an_integer_beyond_64_bits_is_named_out_of_range_not_float():
    with pytest.raises(RecordError, match="to before 4102444800") as info:
        parse_record_json(b'{"id": "a", "events": [{"ts": 18446744073709551616, "type": "view"}]}')
    assert "float" not in str(info.value)


@pytest.mark.parametrize(
    "event",
    [
        {**EVENT, "type": "x" * 10_000_000},
        {**EVENT, "ts": {"email": "ann@example.com", "card": "4111111111111111"}},
        {**EVENT, "item": ["ann@example.com"]},
        {**EVENT, "category": "c" * 10_000},
    ],
)
def test_errors_never_echo_a_value_beyond_a_short_preview(event):
    with pytest.raises(RecordError) as info:
        parse_record({"id": "a", "events": [event]})
    message = str(info.value)
    assert len(message) <= 200
    assert "example.com" not in message and "4111" not in message


@pytest.mark.parametrize("field", ["id", "item", "category"])
def test_a_lone_surrogate_is_refused(field):
    raw = {"id": "a", "events": [dict(EVENT)]}
    (raw if field == "id" else raw["events"][0])[field] = "ok\udc80"
    with pytest.raises(RecordError, match="not valid Unicode"):
        parse_record(raw)
