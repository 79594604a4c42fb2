"""ubm-client without tritonserver: line parsing, exit codes, output order, giving up."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

import orjson
import pytest
from click.testing import CliRunner

from ubm import (
    InvalidRequestError,
    Record,
    Score,
    ServerUnavailableError,
    UbmClient,
    __version__,
)
from ubm._jsonl import parse_line
from ubm.cli import main

T0 = 1512172800  # 2017-12-02 00:00 UTC
VALID = (
    b'{"id": "u1", "events": [{"ts": 1512172800, "type": "view", "item": "i1", "category": "c1"}]}'
)


def line(record_id: str, n_events: int = 1) -> bytes:
    events = [{"ts": T0 + i, "type": "cart", "item": str(i)} for i in range(n_events)]
    return orjson.dumps({"id": record_id, "events": events})


def run(args: list[str], stdin: bytes | None = None):
    return CliRunner().invoke(main, args, input=stdin)


def rows(output: bytes) -> list[dict]:
    return [orjson.loads(row) for row in output.splitlines()]


@pytest.fixture
def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def server(monkeypatch) -> list[list[str]]:
    """Stand in for Triton behind UbmClient.score_batch; returns the ids of each batch sent.

    It scores events / 10, puts a record in segment events % 3 at distance events / 2,
    rejects ids starting with "bad", and is unreachable for "down".
    """
    batches: list[list[str]] = []

    def score_batch(
        self, records: Sequence[Record], *, embedding: bool = False, segment: bool = False
    ) -> list[Score]:
        ids = [r.id for r in records]
        batches.append(ids)
        if "down" in ids:
            raise ServerUnavailableError("failed to connect to all addresses")
        if any(i.startswith("bad") for i in ids):
            raise InvalidRequestError("record 0: rejected")
        return [
            Score(
                r.id,
                len(r.events) / 10,
                (0.5, 0.5) if embedding else None,
                len(r.events) % 3 if segment else None,
                len(r.events) / 2 if segment else None,
            )
            for r in records
        ]

    monkeypatch.setattr(UbmClient, "score_batch", score_batch)
    return batches


def test_parse_line_returns_the_record_of_a_valid_line():
    parsed = parse_line(1, VALID + b"\n")
    assert isinstance(parsed, Record)
    assert parsed.id == "u1"


@pytest.mark.parametrize(
    ("raw", "record_id", "why"),
    [
        (b"\n", None, "empty line"),
        (b"   \r\n", None, "empty line"),
        (b"not json\n", None, "not valid JSON: "),
        (b'{"id": "u1", "events": [\n', None, "not valid JSON: "),
        (b'{"id": "\xff\xfe"}\n', None, "not UTF-8 text: invalid start byte at byte 8"),
        (b"[1, 2]", None, "a record must be a JSON object, got a JSON array"),
        (b'{"events": [{"ts": 1, "type": "view", "item": "i"}]}', None, "id must be a string"),
        (b'{"id": "u2"}', "u2", "events must be a list, got nothing (the field is missing)"),
        (b'{"id": "u3", "events": []}', "u3", "events must not be empty"),
        (
            b'{"id": "u4", "events": "view"}',
            "u4",
            "events must be a list, got a string of 4 characters",
        ),
        (b'{"id": [1], "events": []}', None, "id must be a string or integer, got a JSON array"),
        (b'{"id": 5, "events": [{"type": "view", "item": "i"}]}', "5", "events[0].ts"),
        (b'{"id": "u6", "events": [{"ts": "1", "type": "view", "item": "i"}]}', "u6", ".ts"),
        (
            b'{"id": "u7", "events": [{"ts": 1512172800, "type": "click", "item": "i"}]}',
            "u7",
            ".type",
        ),
        (b'{"id": "u8", "events": [{"ts": 1512172800, "type": "view"}]}', "u8", "events[0].item"),
    ],
)
def test_parse_line_turns_every_bad_line_into_an_error_row(raw, record_id, why):
    row = parse_line(42, raw)
    assert isinstance(row, dict)
    assert row["id"] == record_id
    assert row["line"] == 42
    assert why in row["error"]


def test_score_writes_one_row_per_line_in_input_order(tmp_path, server):
    source = tmp_path / "in.jsonl"
    lines = [line("a", 1), b"oops", line("b", 2), b"", line("c", 3), b'{"id": "d", "events": []}']
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = run(["score", str(source), "--batch-size", "2"])
    assert result.exit_code == 1, result.output
    assert rows(result.stdout_bytes) == [
        {"id": "a", "purchase_probability": 0.1},
        {
            "id": None,
            "line": 2,
            "error": "not valid JSON: unexpected character, expected a JSON value at column 1",
        },
        {"id": "b", "purchase_probability": 0.2},
        {"id": None, "line": 4, "error": "empty line"},
        {"id": "c", "purchase_probability": pytest.approx(0.3)},
        {"id": "d", "line": 6, "error": "events must not be empty"},
    ]
    # Chunks of two lines; a chunk without a valid record sends nothing.
    assert server == [["a"], ["b"], ["c"]]
    assert "6 lines, 3 scored, 3 failed" in result.stderr


def test_score_exits_0_when_every_line_is_scored_and_reads_stdin(server):
    result = run(["score", "-", "--embedding", "--quiet"], stdin=line("a") + b"\n" + line("b"))
    assert result.exit_code == 0
    assert rows(result.stdout_bytes) == [
        {"id": "a", "purchase_probability": 0.1, "embedding": [0.5, 0.5]},
        {"id": "b", "purchase_probability": 0.1, "embedding": [0.5, 0.5]},
    ]
    assert result.stderr == ""


def test_score_segment_adds_the_segment_and_its_distance(server):
    result = run(["score", "-", "--segment", "--quiet"], stdin=line("a", 4))
    assert result.exit_code == 0, result.output
    assert rows(result.stdout_bytes) == [
        {"id": "a", "purchase_probability": 0.4, "segment": 1, "segment_distance": 2.0}
    ]


def test_segments_summarises_a_file_by_segment(tmp_path, server):
    source = tmp_path / "in.jsonl"
    records = [line("a", 1), line("b", 4), line("a", 1), line("c", 2), b"oops"]
    source.write_bytes(b"\n".join(records) + b"\n")
    result = run(["segments", str(source), "--json", "--batch-size", "2"])
    assert result.exit_code == 1, result.output  # a line could not be scored
    summary = orjson.loads(result.stdout_bytes)
    assert summary["scored"] == 4 and summary["failed"] == 1
    assert summary["segments"] == [
        {
            "segment": 1,
            "records": 3,
            "ids": 2,
            "share": 0.75,
            "mean_purchase_probability": pytest.approx(0.2),
            "median_distance": 0.5,
        },
        {
            "segment": 2,
            "records": 1,
            "ids": 1,
            "share": 0.25,
            "mean_purchase_probability": pytest.approx(0.2),
            "median_distance": 1.0,
        },
    ]
    table = run(["segments", "-"], stdin=line("a", 1))
    assert table.exit_code == 0
    assert table.stdout.splitlines()[1].split() == ["1", "1", "1", "100.0%", "0.1000", "0.500"]
    assert "1 records scored, 0 could not be scored" in table.stdout


def test_segments_exits_2_when_the_server_is_unreachable(server):
    result = run(["segments", "-"], stdin=line("down"))
    assert result.exit_code == 2
    assert "giving up" in result.stderr


def test_a_batch_the_server_rejects_is_retried_record_by_record(tmp_path, server):
    out = tmp_path / "out.jsonl"
    result = run(["score", "-", "-o", str(out)], stdin=b"\n".join([line("a"), line("bad1")]))
    assert result.exit_code == 1
    assert rows(out.read_bytes()) == [
        {"id": "a", "purchase_probability": 0.1},
        {"id": "bad1", "line": 2, "error": "rejected by the server: record 0: rejected"},
    ]
    assert server == [["a", "bad1"], ["a"], ["bad1"]]


def test_giving_up_exits_2_and_keeps_complete_rows_of_earlier_batches(tmp_path, server):
    out = tmp_path / "out.jsonl"
    stdin = b"\n".join([line("a"), b"oops", line("down"), line("b")])
    result = run(["score", "-", "-o", str(out), "--batch-size", "2"], stdin=stdin)
    assert result.exit_code == 2
    assert rows(out.read_bytes()) == [
        {"id": "a", "purchase_probability": 0.1},
        {
            "id": None,
            "line": 2,
            "error": "not valid JSON: unexpected character, expected a JSON value at column 1",
        },
    ]
    assert "ServerUnavailableError" in result.stderr


def test_score_against_an_unreachable_server_exits_2_quickly(tmp_path, unused_url):
    source = tmp_path / "in.jsonl"
    source.write_bytes(VALID + b"\n")
    started = time.monotonic()
    result = run(["score", str(source), "--url", unused_url, "--retry-deadline", "0.5"])
    assert result.exit_code == 2
    assert result.stdout_bytes == b""
    assert "ServerUnavailableError" in result.stderr
    assert time.monotonic() - started < 5


def test_health_against_an_unreachable_server_exits_2(unused_url):
    result = run(["health", "--url", unused_url])
    assert result.exit_code == 2
    assert "not ready" in result.stderr


def test_health_exits_0_when_ready(monkeypatch):
    monkeypatch.setattr(UbmClient, "is_ready", lambda self: True)
    result = run(["health"])
    assert result.exit_code == 0
    assert result.stdout.startswith("ready")


def test_version():
    assert run(["--version"]).stdout.strip() == f"ubm-client, version {__version__}"


def test_batch_size_above_the_model_limit_is_a_usage_error(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(VALID)
    result = run(["score", str(source), "--batch-size", "257"])
    assert result.exit_code == 2
    assert "Invalid value for '--batch-size'" in result.stderr


def test_concurrent_requests_keep_the_input_order(tmp_path, server):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(line(f"u{i}", i % 7 + 1) for i in range(100)))
    result = run(["score", str(source), "--batch-size", "3", "--concurrency", "8", "-q"])
    assert result.exit_code == 0
    assert [r["id"] for r in rows(result.stdout_bytes)] == [f"u{i}" for i in range(100)]
    assert len(server) == 34


def test_errors_file_gets_the_error_rows_too(tmp_path, server):
    errors = tmp_path / "errors.jsonl"
    stdin = b"\n".join([line("a"), b"oops", line("b"), b'{"id": "c", "events": []}'])
    result = run(["score", "-", "--errors", str(errors), "-q"], stdin=stdin)
    assert result.exit_code == 1
    assert [r.get("line") for r in rows(result.stdout_bytes)] == [None, 2, None, 4]
    assert [(r["id"], r["line"]) for r in rows(errors.read_bytes())] == [(None, 2), ("c", 4)]


def test_resume_skips_finished_lines_and_appends_the_rest_in_order(tmp_path, server):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(b"\n".join([line("a"), b"oops", line("b"), line("c"), line("d")]) + b"\n")
    # An earlier run wrote "a", the error row of line 2 and "b", and was killed writing "c".
    out.write_bytes(
        b'{"id":"a","purchase_probability":0.1}\n'
        b'{"id":null,"line":2,"error":"not valid JSON"}\n'
        b'{"id":"b","purchase_probability":0.1}\n'
        b'{"id":"c","purch'
    )
    result = run(["score", str(source), "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in rows(out.read_bytes())] == ["a", None, "b", "c", "d"]
    assert server == [["c", "d"]]
    assert "5 lines, 3 skipped, 2 scored, 0 failed" in result.stderr


def test_resume_without_an_output_file_is_a_usage_error(server):
    result = run(["score", "-", "--resume"], stdin=line("a"))
    assert result.exit_code == 2
    assert "--resume needs -o FILE" in result.stderr


def test_the_progress_bar_shows_on_a_terminal(tmp_path, server, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(line(f"u{i}") for i in range(10)))
    result = run(["score", str(source), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0
    assert "records/s" in result.stderr and "100%" in result.stderr
    assert run(["score", str(source), "-q"]).stderr == ""


@pytest.mark.parametrize("header", ["no-colon", ": value"])
def test_a_malformed_header_is_a_usage_error(header):
    result = run(["health", "--header", header])
    assert result.exit_code == 2
    assert "expected 'Name: value'" in result.stderr


def test_info_prints_the_version_its_build_metadata_and_config(monkeypatch):
    metadata = {"name": "ubm", "versions": ["3"]}
    config = {"max_batch_size": 256, "parameters": {"trained_at": {"string_value": "2026"}}}
    monkeypatch.setattr(UbmClient, "metadata", lambda self: metadata)
    monkeypatch.setattr(UbmClient, "config", lambda self: config)
    result = run(["info"])
    assert result.exit_code == 0
    assert orjson.loads(result.stdout) == {
        "version": "3",
        "build": {"trained_at": "2026"},
        "metadata": metadata,
        "config": config,
    }


def test_info_against_an_unreachable_server_exits_2(unused_url):
    result = run(["info", "--url", unused_url])
    assert result.exit_code == 2
    assert "ServerUnavailableError" in result.stderr


def test_connection_options_reach_the_client(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(
        UbmClient, "is_ready", lambda self: seen.update(url=self.url, headers=self._headers)
    )
    ca = tmp_path / "ca.pem"
    ca.write_text("not a real certificate")
    result = run(
        ["health", "--url", "a:1,b:2", "--root-cert", str(ca), "--header", "Authorization: x"]
    )
    assert result.exit_code == 2  # is_ready returned None
    assert seen == {"url": "a:1,b:2", "headers": {"authorization": "x"}}


def write_lines(path, *lines: bytes):
    path.write_bytes(b"".join(line_ + b"\n" for line_ in lines))
    return path


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
@pytest.mark.parametrize("resume", [False, True])
def test_an_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path, server, how, resume):
    source = write_lines(tmp_path / "in.jsonl", line("a"), line("b"))
    content = source.read_bytes()
    target = tmp_path / "out.jsonl"
    if how == "same path":
        target = source
    elif how == "symlink":
        target.symlink_to(source)
    else:
        target.hardlink_to(source)
    result = run(["score", str(source), "-o", str(target), *(["--resume"] if resume else [])])
    assert result.exit_code == 2
    assert "is the input file: refusing to overwrite it" in result.stderr
    assert "Traceback" not in result.output
    assert source.read_bytes() == content
    assert server == []


def test_errors_file_may_not_be_the_input_or_the_output(tmp_path, server):
    source = write_lines(tmp_path / "in.jsonl", line("a"))
    out = write_lines(tmp_path / "out.jsonl", b"keep")
    for errors in (source, out):
        result = run(["score", str(source), "-o", str(out), "--errors", str(errors)])
        assert result.exit_code == 2, result.output
        assert "refusing to overwrite it" in result.stderr
    assert out.read_bytes() == b"keep\n"


@pytest.mark.parametrize(
    ("where", "reason"),
    [("missing/dir/e.jsonl", "no such directory"), ("a_file/e.jsonl", "Not a directory")],
)
def test_a_bad_errors_path_leaves_the_output_untouched(tmp_path, server, where, reason):
    source = write_lines(tmp_path / "in.jsonl", line("a"))
    keep = write_lines(tmp_path / "keep.out", b'{"id":"old","purchase_probability":0.5}')
    content = keep.read_bytes()
    write_lines(tmp_path / "a_file", b"x")
    fresh = tmp_path / "fresh.out"
    for out in (keep, fresh):
        result = run(["score", str(source), "-o", str(out), "--errors", str(tmp_path / where)])
        assert result.exit_code == 2
        assert result.stderr.strip().splitlines() == [
            f"Error: --errors {tmp_path / where}: {reason}"
        ]
    assert keep.read_bytes() == content
    assert not fresh.exists()
    assert server == []


@pytest.mark.parametrize("where", ["missing/out.jsonl", "a_file/out.jsonl"])
def test_an_output_that_cannot_be_created_is_one_line_and_exit_2(tmp_path, server, where):
    source = write_lines(tmp_path / "in.jsonl", line("a"))
    write_lines(tmp_path / "a_file", b"x")
    result = run(["score", str(source), "-o", str(tmp_path / where)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"-o {tmp_path / where}: " in result.stderr


def test_resume_with_duplicate_ids_writes_one_row_per_line(tmp_path, server):
    ids = [f"u{i}" for i in range(10)]
    ids[7] = ids[0]
    source = write_lines(tmp_path / "in.jsonl", *(line(i) for i in ids))
    out = tmp_path / "out.jsonl"
    first = run(["score", str(source), "-o", str(out)])
    assert first.exit_code == 0
    out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:3]))
    result = run(["score", str(source), "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in rows(out.read_bytes())] == ids
    assert "10 lines, 3 skipped, 7 scored" in result.stderr


@pytest.mark.parametrize(
    "earlier",
    [
        b'{"id":"a","purchase_probability":0.1}\n{"id":"x","purchase_probability":0.1}\n',
        b'{"id":"a","purchase_probability":0.1}\n' * 3,
        b"not a row\n",
    ],
)
def test_resume_refuses_an_output_that_does_not_answer_the_input(tmp_path, server, earlier):
    source = write_lines(tmp_path / "in.jsonl", line("a"), line("b"))
    out = tmp_path / "out.jsonl"
    out.write_bytes(earlier)
    result = run(["score", str(source), "-o", str(out), "--resume"])
    assert result.exit_code == 2
    assert "--resume: " in result.stderr and "Traceback" not in result.output
    assert out.read_bytes() == earlier
    assert server == []


@pytest.mark.parametrize("url", ["", ",", "127.0.0.1:99999", "localhost", "a:1,,b:2"])
def test_a_malformed_url_is_a_usage_error(server, url):
    result = run(["score", "-", "--url", url], stdin=line("a"))
    assert result.exit_code == 2
    assert "Invalid value for '--url'" in result.stderr
    assert "Traceback" not in result.output
    assert server == []


def test_a_timestamp_out_of_range_fails_its_line_and_the_rest_of_the_batch_is_scored(server):
    good = line("a")
    millis = orjson.dumps({"id": "ms", "events": [{"ts": T0 * 1000, "type": "view", "item": "1"}]})
    result = run(["score", "-", "--batch-size", "4"], stdin=b"\n".join([good, millis, good]))
    assert result.exit_code == 1
    out = rows(result.stdout_bytes)
    assert [r.get("purchase_probability") is not None for r in out] == [True, False, True]
    assert "events[0].ts must be whole unix seconds" in out[1]["error"]
    assert server == [["a", "a"]]


def test_a_byte_order_mark_before_the_first_line_is_skipped(server):
    result = run(["score", "-"], stdin=b"\xef\xbb\xbf" + line("a") + b"\n" + line("b"))
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in rows(result.stdout_bytes)] == ["a", "b"]


def test_an_integer_id_comes_back_as_its_string(server):
    raw = orjson.dumps({"id": 42, "events": [{"ts": T0, "type": "view", "item": "1"}]})
    result = run(["score", "-"], stdin=raw)
    assert rows(result.stdout_bytes)[0]["id"] == "42"
