import pytest

from ubm.records import MAX_EVENTS, RecordError, parse_record, parse_record_json, record_id_of

EVENT = {"ts": 100, "type": "view", "item": "7", "category": "3"}


def test_valid_record_is_sorted_by_time_and_extra_fields_are_ignored():
    record = parse_record(
        {
            "id": "u1",
            "label": 1,
            "events": [{**EVENT, "ts": 200, "type": "cart", "x": 1}, EVENT],
        }
    )
    assert record.id == "u1"
    assert [e.ts for e in record.events] == [100, 200]
    assert record.events[1].type == "cart"


def test_integer_ids_and_missing_category_are_accepted():
    record = parse_record({"id": 5, "events": [{"ts": 1, "type": "buy", "item": 9}]})
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
        ({"id": "a", "events": [{**EVENT, "ts": "100"}]}, "events[0].ts must be an integer"),
        ({"id": "a", "events": [{**EVENT, "ts": True}]}, "events[0].ts must be an integer"),
        (
            {"id": "a", "events": [EVENT, {**EVENT, "type": "click"}]},
            "events[1].type must be one of",
        ),
        ({"id": "a", "events": [{"ts": 1, "type": "view"}]}, "events[0].item must be a string"),
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
