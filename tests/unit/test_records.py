import pickle

import pytest

from ubm.records import (
    ERROR_FIELDS,
    MAX_EVENTS,
    RecordError,
    parse_record,
    parse_record_json,
    record_id_of,
)

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


def test_a_null_category_is_accepted_as_none():
    record = parse_record({"id": 5, "events": [{**EVENT, "category": None}]})
    assert record.events[0].category == ""


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ([], "record", "a record must be a JSON object, got a JSON array"),
        ({"events": [EVENT]}, "id", "id must be a string or integer, got nothing (the field is"),
        ({"id": None, "events": [EVENT]}, "id", "id must be a string or integer, got null"),
        ({"id": "", "events": [EVENT]}, "id", "id must not be empty"),
        ({"id": "a"}, "events", "events must be a list, got nothing"),
        ({"id": "a", "events": "view"}, "events", "events must be a list, got a string of 4"),
        ({"id": "a", "events": []}, "events", "events must not be empty"),
        ({"id": "a", "events": [3]}, "events", "events[0] must be an object, got an integer"),
        (
            {"id": "a", "events": [{**EVENT, "ts": "100"}]},
            "ts",
            "events[0].ts must be whole unix seconds",
        ),
        ({"id": "a", "events": [{**EVENT, "ts": True}]}, "ts", "got a boolean"),
        (
            {"id": "a", "events": [EVENT, {**EVENT, "type": "click"}]},
            "type",
            "events[1].type must be one of view, cart, fav, buy, got another string",
        ),
        ({"id": "a", "events": [{**EVENT, "type": 2}]}, "type", "got an integer"),
        (
            {"id": "a", "events": [{"ts": T0, "type": "view"}]},
            "item",
            "events[0].item must be a string",
        ),
        (
            {"id": "a", "events": [{**EVENT, "category": 1.5}]},
            "category",
            "events[0].category must be a string or integer, got a number with a fraction",
        ),
        ({"id": "a", "events": [EVENT] * (MAX_EVENTS + 1)}, "events", "at most"),
    ],
)
def test_invalid_records_name_the_field_and_the_rule(raw, field, message):
    with pytest.raises(RecordError) as info:
        parse_record(raw)
    assert message in str(info.value)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("", "not valid JSON"),
        ('{"id": ' + "9" * 5000 + "}", "not valid JSON: a number has too many digits"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_undecodable_text_is_a_json_error(text, message):
    with pytest.raises(RecordError, match=message) as info:
        parse_record_json(text)
    assert info.value.field == "json"


def test_every_field_is_in_the_documented_vocabulary():
    assert ERROR_FIELDS == ("json", "record", "id", "events", "ts", "type", "item", "category")
    with pytest.raises(ValueError, match="field must be one of"):
        RecordError("x", field="value")
    assert RecordError("x").field == "record"


def test_at_record_names_the_record_and_keeps_the_field():
    error = RecordError("events[0].ts must be whole unix seconds", field="ts").at_record(3)
    assert str(error) == "record 3: events[0].ts must be whole unix seconds"
    assert error.field == "ts"


def test_the_field_survives_pickling():
    copy = pickle.loads(pickle.dumps(RecordError("id must not be empty", field="id")))
    assert (str(copy), copy.field) == ("id must not be empty", "id")


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
    with pytest.raises(RecordError, match="got an integer outside that range") as info:
        parse_record_json(b'{"id": "a", "events": [{"ts": 18446744073709551616, "type": "view"}]}')
    assert "float" not in str(info.value)


@pytest.mark.parametrize("field", ["id", "item", "category"])
def test_a_lone_surrogate_is_refused(field):
    raw = {"id": "a", "events": [dict(EVENT)]}
    (raw if field == "id" else raw["events"][0])[field] = "ok\udc80"
    with pytest.raises(RecordError, match="not valid Unicode") as info:
        parse_record(raw)
    assert info.value.field == field


SECRET = "ann@example.com"
SECRET_NUMBER = 4111111111111111


def bad_records() -> list[object]:
    """A bad value of every kind in every field, each holding `SECRET` or `SECRET_NUMBER`."""
    values = [
        SECRET,
        SECRET * 100,
        SECRET_NUMBER,
        -SECRET_NUMBER,
        SECRET_NUMBER + 0.5,
        [SECRET],
        {SECRET: SECRET},
        {"email": SECRET_NUMBER},
        True,
        f"{SECRET}\udc80",
    ]
    records: list[object] = [
        [SECRET],
        SECRET,
        SECRET_NUMBER,
        {"id": SECRET, "events": [EVENT] * (MAX_EVENTS + 1)},
    ]
    for value in values:
        records.append({"id": value, "events": [EVENT]})
        records.append({"id": value, "events": []})
        records.append({"id": SECRET, "events": value})
        records.append({"id": SECRET, "events": [value]})
        for key in EVENT:
            records.append({"id": SECRET, "events": [{**EVENT, key: value}]})
            records.append({"id": SECRET, "events": [EVENT, {**EVENT, key: value}]})
    return records


def test_no_error_message_holds_the_bad_value():
    messages = []
    for raw in bad_records():
        try:
            parse_record(raw)
        except RecordError as e:
            messages.append(str(e))
    assert len(messages) >= 100  # most of them are bad; a secret string is a valid item
    leaks = [m for m in messages if "example.com" in m or "4111" in m or "ann@" in m]
    assert leaks == []
    assert max(map(len, messages)) <= 200


@pytest.mark.parametrize(
    "text",
    [
        b'{"id": "ann@example.com", oops}',
        b'{"id": "ann@example.com\xff"}',
        b'{"id": "ann@example.com\\q"}',
        b'{"id": "ann@example.com"} 4111111111111111',
        b"4111111111111111" + b"1" * 5000,
        b'\xef\xbb\xbf{"id": "ann@example.com"}',
    ],
)
def test_no_decoding_error_holds_the_text(text):
    with pytest.raises(RecordError) as info:
        parse_record_json(text)
    assert "example.com" not in str(info.value) and "4111" not in str(info.value)
