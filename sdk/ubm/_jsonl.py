"""The CLI's JSONL plumbing: parsing input lines, scoring chunks of them, resuming an output file.

Every input line gives exactly one output row: a score row, or an error row
``{"id": ..., "line": n, "error": "..."}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ubm.client import UbmClient
from ubm.exceptions import InvalidRequestError
from ubm.records import Record, RecordError, parse_record, record_id_of

BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte order mark some editors put at the start of a file."""
Row = dict[str, Any]
Line = tuple[int, Record | Row]
"""A 1-based input line number with its parsed record, or with its finished error row."""


def error_row(record_id: str | None, line_no: int, why: str) -> Row:
    """The output row of an input line that could not be scored."""
    return {"id": record_id, "line": line_no, "error": why}


def parse_line(line_no: int, raw: bytes) -> Record | Row:
    """Parse one input line.

    Args:
        line_no: the 1-based line number, for the error row.
        raw: the line's bytes, with or without its line ending.

    Returns:
        The validated `Record`, or the error row when the line is blank, not UTF-8, not JSON or
        not a valid record.
    """
    if not raw.strip():
        return error_row(None, line_no, "empty line")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return error_row(None, line_no, _decode_error(raw, e))
    try:
        return parse_record(value)
    except RecordError as e:
        return error_row(record_id_of(value), line_no, str(e))


def _decode_error(raw: bytes, error: orjson.JSONDecodeError) -> str:
    # Worded like ubm.records.parse_record_json. orjson calls every bad byte "surrogates not
    # allowed", so the UTF-8 case is named by the standard decoder instead.
    try:
        raw.decode()
    except UnicodeDecodeError as e:
        return f"not UTF-8 text: {e.reason} at byte {e.start}"
    return f"not valid JSON: {error.msg} at column {error.colno}"


def line_id(item: Record | Row) -> str | None:
    """The record id of a parsed line, or of its error row (None when it has none)."""
    return item.id if isinstance(item, Record) else item["id"]


class ResumeError(ValueError):
    """The output to resume does not answer the input: another file, or one that changed."""


@dataclass
class Chunk:
    """Consecutive input lines to score together.

    Attributes:
        lines: the lines to score, at most the chunk size.
        n_bytes: bytes read for this chunk, skipped lines included (for the progress bar).
        n_skipped: lines skipped because their result is already in the output.
    """

    lines: list[Line] = field(default_factory=list)
    n_bytes: int = 0
    n_skipped: int = 0


def read_chunks(
    stream: BinaryIO, size: int, answered: Sequence[str | None] = ()
) -> Iterator[Chunk]:
    """Parse ``stream`` lazily into chunks of ``size`` lines: memory stays constant.

    A UTF-8 byte order mark at the start of the stream is skipped.

    Args:
        stream: the JSONL input.
        size: lines to score per chunk.
        answered: the ids of the rows an earlier run wrote (``--resume``): the output answers
            the input line by line, so these are the first ``len(answered)`` lines, skipped
            after checking that their ids match.

    Raises:
        ResumeError: a skipped line's id differs from its row's, or the input is shorter.
    """
    chunk = Chunk()
    line_no = 0
    for line_no, raw in enumerate(stream, start=1):
        chunk.n_bytes += len(raw)
        item = parse_line(line_no, raw.removeprefix(BOM) if line_no == 1 else raw)
        if line_no <= len(answered):
            if line_id(item) != answered[line_no - 1]:
                # Names the line, never the ids: they are record content, and this goes to logs.
                raise ResumeError(
                    f"the id of line {line_no} differs from the id of the output's row"
                    f" {line_no}: the output is not from this input"
                )
            chunk.n_skipped += 1
            continue
        chunk.lines.append((line_no, item))
        if len(chunk.lines) == size:
            yield chunk
            chunk = Chunk()
    if line_no < len(answered):
        raise ResumeError(
            f"the output has {len(answered)} rows but the input only {line_no} lines:"
            " the output is not from this input"
        )
    if chunk.lines or chunk.n_bytes:
        yield chunk


def score_lines(
    client: UbmClient, lines: list[Line], *, embedding: bool, segment: bool = False
) -> list[Row]:
    """Score the records among ``lines`` in one request and return every line's output row.

    Args:
        client: the open client.
        lines: at most ``contract.MAX_BATCH_SIZE`` parsed lines.
        embedding: add each record's embedding to its row.
        segment: add each record's segment and distance to its centroid to its row.

    Returns:
        One row per line, in input order: a score row, or an error row.

    Raises:
        UbmError: the server could not score the batch (other than rejecting a record).
    """
    to_score = {line_no: item for line_no, item in lines if isinstance(item, Record)}
    try:
        scores = (
            client.score_batch(list(to_score.values()), embedding=embedding, segment=segment)
            if to_score
            else []
        )
        rows = {line_no: score.to_dict() for line_no, score in zip(to_score, scores, strict=True)}
    except InvalidRequestError:
        # The client validates like the server does, so this means the two disagree. Send the
        # records one by one, so that only the rejected ones become error rows.
        rows = {
            line_no: _score_one(client, line_no, r, embedding, segment)
            for line_no, r in to_score.items()
        }
    return [item if isinstance(item, dict) else rows[line_no] for line_no, item in lines]


def _score_one(
    client: UbmClient, line_no: int, record: Record, embedding: bool, segment: bool
) -> Row:
    try:
        return client.score_batch([record], embedding=embedding, segment=segment)[0].to_dict()
    except InvalidRequestError as e:
        return error_row(record.id, line_no, f"rejected by the server: {e}")


def answered_rows(output: Path) -> tuple[list[str | None], int]:
    """The ids of the complete rows of an earlier run's output, for ``--resume``.

    A last line cut short (the earlier run was killed while writing it) is not counted.

    Args:
        output: the earlier run's output file; a missing file counts as empty.

    Returns:
        The id of each complete row, in order, and the number of bytes they take (where the
        cut-off line, if any, starts).

    Raises:
        ResumeError: a row is not ubm-client output.
    """
    ids: list[str | None] = []
    complete_bytes = 0
    if not output.exists():
        return ids, complete_bytes
    with output.open("rb") as rows:
        for row_no, raw in enumerate(rows, start=1):
            if not raw.endswith(b"\n"):
                break
            try:
                row = orjson.loads(raw)
                ids.append(row["id"])
            except (orjson.JSONDecodeError, KeyError, TypeError) as e:
                raise ResumeError(f"row {row_no} of {output} is not ubm-client output") from e
            complete_bytes += len(raw)
    return ids, complete_bytes
