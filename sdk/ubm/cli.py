"""The ``ubm-client`` command line: score JSONL files and check the server's health."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import click
import orjson

from ubm import __version__, contract
from ubm.client import DEFAULT_BATCH_SIZE, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, UbmClient
from ubm.exceptions import InvalidRequestError, UbmError
from ubm.records import Record, RecordError, parse_record, record_id_of

EXIT_OK = 0
EXIT_LINES_FAILED = 1
EXIT_SERVER_FAILED = 2

HEALTH_TIMEOUT_S = 5.0

Line = tuple[int, Record | dict[str, Any]]
"""A 1-based input line number with its parsed record, or with its finished error row."""


def error_row(record_id: str | None, line_no: int, why: str) -> dict[str, Any]:
    """The output row of an input line that could not be scored."""
    return {"id": record_id, "line": line_no, "error": why}


def parse_line(line_no: int, raw: bytes) -> Record | dict[str, Any]:
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


def score_lines(client: UbmClient, lines: list[Line], *, embedding: bool) -> list[dict[str, Any]]:
    """Score the records among ``lines`` in one request and return every line's output row.

    Args:
        client: the open client.
        lines: at most ``contract.MAX_BATCH_SIZE`` parsed lines.
        embedding: add each record's embedding to its row.

    Returns:
        One row per line, in input order: a score row, or an error row.

    Raises:
        UbmError: the server could not score the batch (other than rejecting a record).
    """
    to_score = {line_no: item for line_no, item in lines if isinstance(item, Record)}
    try:
        scores = (
            client.score_batch(list(to_score.values()), embedding=embedding) if to_score else []
        )
        rows = {line_no: score.to_dict() for line_no, score in zip(to_score, scores, strict=True)}
    except InvalidRequestError:
        # The client validates like the server does, so this means the two disagree. Send the
        # records one by one, so that only the rejected ones become error rows.
        rows = {
            line_no: _score_one(client, line_no, r, embedding) for line_no, r in to_score.items()
        }
    return [item if isinstance(item, dict) else rows[line_no] for line_no, item in lines]


def _score_one(client: UbmClient, line_no: int, record: Record, embedding: bool) -> dict[str, Any]:
    try:
        return client.score_batch([record], embedding=embedding)[0].to_dict()
    except InvalidRequestError as e:
        return error_row(record.id, line_no, f"rejected by the server: {e}")


def _chunks(stream: BinaryIO, size: int) -> Iterator[list[Line]]:
    """Parsed lines in chunks of ``size``: memory stays constant whatever the input's length."""
    chunk: list[Line] = []
    for line_no, raw in enumerate(stream, start=1):
        chunk.append((line_no, parse_line(line_no, raw)))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_url_option = click.option(
    "--url",
    default=contract.DEFAULT_URL,
    show_default=True,
    metavar="HOST:PORT",
    help="Triton's gRPC address.",
)


@click.group(name="ubm-client")
@click.version_option(__version__, prog_name="ubm-client")
def main() -> None:
    """Score user-behaviour records with the ubm model served by Triton."""


@main.command()
@click.argument("file", type=click.File("rb"))
@_url_option
@click.option(
    "-o",
    "--output",
    type=click.File("wb", lazy=False),
    default="-",
    help="Where to write the JSONL results  [default: stdout].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, contract.MAX_BATCH_SIZE),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Input lines per request.",
)
@click.option("--embedding", is_flag=True, help="Add each user's embedding to the output.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds each request may take.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_RETRIES,
    show_default=True,
    help="Retries of a request while the server is unreachable or overloaded.",
)
@click.option("-q", "--quiet", is_flag=True, help="No summary line on stderr.")
@click.pass_context
def score(
    ctx: click.Context,
    file: BinaryIO,
    url: str,
    output: BinaryIO,
    batch_size: int,
    embedding: bool,
    timeout: float,
    retries: int,
    quiet: bool,
) -> None:
    """Score the JSONL records in FILE ('-' reads stdin).

    Each input line holds one record: {"id": ..., "events": [{"ts", "type", "item",
    "category"}, ...]}. Each output line answers the input line at the same position:

    \b
      {"id": ..., "purchase_probability": ...}     (plus "embedding" with --embedding)
      {"id": ... or null, "line": N, "error": "..."}   for a line that could not be scored

    The input is read as a stream, so files of any size work.

    \b
    Exit status:
      0  every line was scored
      1  some lines could not be scored (see their "error")
      2  the server could not be reached or gave up; the output holds the lines
         scored before that, each one complete (click also exits 2 on a usage error)
    """
    started = time.perf_counter()
    n_lines = n_failed = 0
    try:
        with UbmClient(url, timeout_s=timeout, max_retries=retries) as client:
            for lines in _chunks(file, batch_size):
                rows = score_lines(client, lines, embedding=embedding)
                output.writelines(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows)
                output.flush()
                n_lines += len(rows)
                n_failed += sum("error" in row for row in rows)
    except UbmError as e:
        click.echo(f"ubm-client: giving up at {url}: {type(e).__name__}: {e}", err=True)
        status = EXIT_SERVER_FAILED
    else:
        status = EXIT_LINES_FAILED if n_failed else EXIT_OK
    if not quiet:
        n_scored = n_lines - n_failed
        rate = n_scored / (time.perf_counter() - started)
        click.echo(
            f"ubm-client: {n_lines} lines, {n_scored} scored, {n_failed} failed, "
            f"{rate:.1f} records/s",
            err=True,
        )
    ctx.exit(status)


@main.command()
@_url_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=HEALTH_TIMEOUT_S,
    show_default=True,
    help="Seconds each check may take.",
)
@click.pass_context
def health(ctx: click.Context, url: str, timeout: float) -> None:
    """Check that the server and the ubm model are ready.

    \b
    Exit status:
      0  the server and the model are ready
      2  the server cannot be reached, or it or the model is not ready
    """
    with UbmClient(url, timeout_s=timeout) as client:
        ready = client.is_ready()
    if ready:
        click.echo(f"ready: model {contract.ENSEMBLE!r} at {url}")
    else:
        click.echo(f"not ready: model {contract.ENSEMBLE!r} at {url}, or no server there", err=True)
    ctx.exit(EXIT_OK if ready else EXIT_SERVER_FAILED)
