"""The ``ubm-client`` command line: score JSONL files, summarise them by segment, describe the
model, check health."""

from __future__ import annotations

import functools
import os
import stat
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import click
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ubm import __version__, contract
from ubm._concurrency import map_ordered
from ubm._endpoints import parse_urls
from ubm._jsonl import Chunk, ResumeError, Row, answered_rows, read_chunks, score_lines
from ubm._outputs import OutputError, check_distinct, open_outputs
from ubm._segment_summary import SegmentSummary
from ubm.client import UbmClient
from ubm.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_RETRY_DEADLINE_S,
    DEFAULT_TIMEOUT_S,
    TlsConfig,
)
from ubm.exceptions import UbmError

EXIT_OK = 0
EXIT_LINES_FAILED = 1
"""Some lines could not be scored; each has its error row."""
EXIT_SERVER_FAILED = 2
"""The run could not go on: the server gave up, or an option or file is unusable."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (SIGINT), as a shell reports it: 128 + the signal's number."""

HEALTH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Connection:
    """Where and how to reach the server, from the options every command shares."""

    url: str
    tls: TlsConfig | None
    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = field(default=None, repr=False)
    model_version: str | None = None

    def client(self, **settings: Any) -> UbmClient:
        """A `UbmClient` for this connection with the command's own ``settings``."""
        return UbmClient(
            self.url,
            tls=self.tls,
            headers=self.headers,
            token=self.token,
            model_version=self.model_version,
            **settings,
        )


class FatalError(click.ClickException):
    """A one-line error that stops the command before it does anything (exit status 2)."""

    exit_code = EXIT_SERVER_FAILED


def _check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_urls(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from e
    return value


def _parse_headers(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(
                "expected 'Name: value' (a name, a colon, then the value)", ctx, param
            )
        # gRPC metadata keys are lower case.
        headers[name.strip().lower()] = content.strip()
    return headers


_cert_path = click.Path(exists=True, dir_okay=False, path_type=Path)


def connection_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add --url, the TLS options and --header; the command receives a `Connection`."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        url: str,
        tls: bool,
        root_cert: Path | None,
        client_cert: Path | None,
        client_key: Path | None,
        header: dict[str, str],
        token: str | None,
        token_file: Path | None,
        model_version: str | None,
        **kwargs: Any,
    ) -> None:
        use_tls = tls or any(p is not None for p in (root_cert, client_cert, client_key))
        try:
            tls_config = (
                TlsConfig(
                    root_certificates=root_cert,
                    private_key=client_key,
                    certificate_chain=client_cert,
                )
                if use_tls
                else None
            )
        except ValueError as e:
            raise click.UsageError(f"--client-cert and --client-key go together: {e}") from e
        if token_file is not None:
            token = token_file.read_text().strip()
        connection = Connection(url, tls_config, header, token or None, model_version)
        command(*args, connection=connection, **kwargs)

    options = [
        click.option(
            "--url",
            default=contract.DEFAULT_URL,
            show_default=True,
            callback=_check_url,
            metavar="HOST:PORT[,HOST:PORT...]|dns:[//DNS/]NAME:PORT",
            help="Triton's gRPC address; several are used round robin, skipping failed ones."
            " A dns: name's addresses (a headless Service) are balanced by gRPC itself.",
        ),
        click.option(
            "--tls", is_flag=True, help="Use TLS, trusting the system's root certificates."
        ),
        click.option(
            "--root-cert", type=_cert_path, help="PEM root certificates for TLS (implies --tls)."
        ),
        click.option("--client-cert", type=_cert_path, help="PEM client certificate chain (mTLS)."),
        click.option("--client-key", type=_cert_path, help="PEM client private key (mTLS)."),
        click.option(
            "--header",
            multiple=True,
            callback=_parse_headers,
            metavar="'NAME: VALUE'",
            help="Metadata sent with every call, e.g. 'authorization: Bearer T'. Repeatable.",
        ),
        click.option(
            "--token",
            envvar=contract.TOKEN_ENV,
            show_envvar=True,
            help="The server's client token (ubm-build serve --token-file). Prefer the"
            " environment variable or --token-file: a command line is visible to other users.",
        ),
        click.option(
            "--token-file",
            type=_cert_path,
            help="File holding the server's client token (overrides --token).",
        ),
        click.option(
            "--model-version",
            metavar="N",
            help="Call this version of the model  [default: the one the server serves].",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@click.group(name="ubm-client")
@click.version_option(__version__, prog_name="ubm-client")
def main() -> None:
    """Score user-behaviour records with the ubm model served by Triton."""


@dataclass
class _Tally:
    """What the summary line and the exit status report."""

    lines: int = 0
    skipped: int = 0
    failed: int = 0

    @property
    def scored(self) -> int:
        return self.lines - self.skipped - self.failed

    def add(self, chunk: Chunk, rows: list[Row]) -> None:
        self.lines += chunk.n_skipped + len(rows)
        self.skipped += chunk.n_skipped
        self.failed += sum("error" in row for row in rows)


def _progress(quiet: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[lines]} lines, {task.fields[failed]} failed"),
        TextColumn("{task.fields[rate]:.0f} records/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
    )


def _input_size(stream: BinaryIO) -> int | None:
    """The size of a regular input file, for the ETA; None for a pipe or a terminal."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):  # CliRunner's in-memory stdin has no file descriptor
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


_batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(1, contract.MAX_BATCH_SIZE),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Input lines per request.",
)
_concurrency_option = click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_IN_FLIGHT,
    show_default=True,
    help="Requests in flight at once.",
)
_request_timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds each request may take.",
)


def _batch_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--batch-size`` and ``--concurrency``, as `score` and `segments` take them."""
    return _batch_size_option(_concurrency_option(command))


@main.command()
@click.argument("file", type=click.File("rb"))
@connection_options
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default="-",
    help="Where to write the JSONL results  [default: stdout].",
)
@click.option(
    "--errors",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the error rows to this JSONL file.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Carry on an interrupted run: skip the lines --output already answers, append the rest.",
)
@_batch_options
@click.option("--embedding", is_flag=True, help="Add each user's embedding to the output.")
@click.option(
    "--segment",
    is_flag=True,
    help="Add each user's segment and its distance to the segment's centroid to the output.",
)
@_request_timeout_option
@click.option(
    "--retry-deadline",
    type=click.FloatRange(min=0),
    default=DEFAULT_RETRY_DEADLINE_S,
    show_default=True,
    help="Seconds a request is retried while the server is unreachable or overloaded.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary on stderr.")
@click.pass_context
def score(
    ctx: click.Context,
    file: BinaryIO,
    connection: Connection,
    output: Path,
    errors: Path | None,
    resume: bool,
    batch_size: int,
    concurrency: int,
    embedding: bool,
    segment: bool,
    timeout: float,
    retry_deadline: float,
    quiet: bool,
) -> None:
    """Score the JSONL records in FILE ('-' reads stdin).

    Each input line holds one record: {"id": ..., "events": [{"ts", "type", "item",
    "category"}, ...]}. Each output line answers the input line at the same position:

    \b
      {"id": ..., "purchase_probability": ...}     (plus "segment" and
                                                    "segment_distance" with --segment,
                                                    "embedding" with --embedding)
      {"id": ... or null, "line": N, "error": "..."}   for a line that could not be scored

    The input is read as a stream and at most --concurrency batches are held at once, so
    files of any size work. A progress bar is drawn when stderr is a terminal.

    \b
    Exit status:
      0    every line was scored
      1    some lines could not be scored (see their "error")
      2    the server could not be reached or gave up; the output holds the lines
           scored before that, each one complete, and --resume carries on from there.
           Also for a usage error or an unusable file, before anything is written
      130  interrupted (Ctrl-C); the output holds the lines scored so far, as for 2
    """
    if resume and str(output) == "-":
        raise click.UsageError("--resume needs -o FILE")
    named = {"-o": output, "--errors": errors}
    outputs = {name: path for name, path in named.items() if path and str(path) != "-"}
    try:
        check_distinct(file, outputs)
    except OutputError as e:
        raise FatalError(str(e)) from e
    try:
        answered, answered_bytes = answered_rows(output) if resume else ([], 0)
    except ResumeError as e:
        raise FatalError(f"--resume: {e}") from e
    # A fresh run empties its outputs; a resumed one drops a cut-off last row and appends.
    cut_to = {"-o": answered_bytes} if resume else dict.fromkeys(outputs, 0)
    started = time.perf_counter()
    tally = _Tally()
    with ExitStack() as files:
        try:
            opened = files.enter_context(open_outputs(outputs, cut_to=cut_to))
        except OutputError as e:
            raise FatalError(str(e)) from e
        out = opened.get("-o") or files.enter_context(click.open_file("-", "wb"))
        errors_out = opened.get("--errors")
        progress = files.enter_context(_progress(quiet))
        task = progress.add_task("scoring", total=_input_size(file), lines=0, failed=0, rate=0.0)
        try:
            with connection.client(timeout_s=timeout, retry_deadline_s=retry_deadline) as client:
                # On Ctrl-C, map_ordered stops without waiting for the calls in flight, and
                # leaving this block closes the client, which cancels them.
                for chunk, rows in map_ordered(
                    lambda c: (
                        c,
                        score_lines(client, c.lines, embedding=embedding, segment=segment),
                    ),
                    read_chunks(file, batch_size, answered),
                    concurrency,
                ):
                    _write(out, rows)
                    if errors_out is not None:
                        _write(errors_out, [row for row in rows if "error" in row])
                    tally.add(chunk, rows)
                    progress.update(
                        task,
                        advance=chunk.n_bytes,
                        lines=tally.lines,
                        failed=tally.failed,
                        rate=tally.scored / (time.perf_counter() - started),
                    )
        except ResumeError as e:
            progress.stop()
            click.echo(f"ubm-client: --resume: {e}", err=True)
            status = EXIT_SERVER_FAILED
        except UbmError as e:
            progress.stop()
            click.echo(
                f"ubm-client: giving up at {connection.url}: {type(e).__name__}: {e}", err=True
            )
            status = EXIT_SERVER_FAILED
        except KeyboardInterrupt:
            progress.stop()
            click.echo("ubm-client: interrupted; --resume carries on from here", err=True)
            status = EXIT_INTERRUPTED
        else:
            status = EXIT_LINES_FAILED if tally.failed else EXIT_OK
    if not quiet:
        rate = tally.scored / (time.perf_counter() - started)
        skipped = f"{tally.skipped} skipped, " if resume else ""
        click.echo(
            f"ubm-client: {tally.lines} lines, {skipped}{tally.scored} scored, "
            f"{tally.failed} failed, {rate:.1f} records/s",
            err=True,
        )
    ctx.exit(status)


def _write(stream: BinaryIO, rows: list[Row]) -> None:
    # Whole rows, flushed per chunk: a run that stops leaves only complete lines behind.
    stream.write(b"".join(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows))
    stream.flush()


@main.command()
@click.argument("file", type=click.File("rb"))
@connection_options
@_batch_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_request_timeout_option
@click.pass_context
def segments(
    ctx: click.Context,
    file: BinaryIO,
    connection: Connection,
    batch_size: int,
    concurrency: int,
    as_json: bool,
    timeout: float,
) -> None:
    """Score the JSONL records in FILE and summarise them by the model's user segments.

    For each segment: its records, distinct ids, share of the scored records, mean purchase
    probability and median distance to the segment's centroid. The model card describes each
    segment (its users' purchase rate, event mix, session length, top categories).

    \b
    Exit status:
      0    every line was scored and summarised
      1    some lines could not be scored (counted, left out of the summary)
      2    the server could not be reached or gave up; nothing is printed
      130  interrupted (Ctrl-C); nothing is printed
    """
    summary = SegmentSummary()
    try:
        with connection.client(timeout_s=timeout) as client:
            for rows in map_ordered(
                lambda c: score_lines(client, c.lines, embedding=False, segment=True),
                read_chunks(file, batch_size, []),
                concurrency,
            ):
                summary.add(rows)
    except UbmError as e:
        click.echo(f"ubm-client: giving up at {connection.url}: {type(e).__name__}: {e}", err=True)
        ctx.exit(EXIT_SERVER_FAILED)
    except KeyboardInterrupt:
        click.echo("ubm-client: interrupted", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    if as_json:
        described = {"segments": summary.rows(), "scored": summary.scored, "failed": summary.failed}
        click.echo(orjson.dumps(described, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(summary.table())
    ctx.exit(EXIT_LINES_FAILED if summary.failed else EXIT_OK)


_check_timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=HEALTH_TIMEOUT_S,
    show_default=True,
    help="Seconds each call may take.",
)


@main.command()
@connection_options
@_check_timeout_option
@click.pass_context
def info(ctx: click.Context, connection: Connection, timeout: float) -> None:
    """Print the served version, its build, the model's metadata and configuration as JSON.

    \b
    Exit status:
      0  printed
      2  the server cannot be reached, or does not serve the model
    """
    try:
        with connection.client(timeout_s=timeout, retry_deadline_s=0) as client:
            metadata, config = client.metadata(), client.config()
    except UbmError as e:
        click.echo(f"ubm-client: {connection.url}: {type(e).__name__}: {e}", err=True)
        ctx.exit(EXIT_SERVER_FAILED)
    build = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
    described = {
        "version": ",".join(metadata.get("versions", [])),
        "build": build,
        "metadata": metadata,
        "config": config,
    }
    click.echo(orjson.dumps(described, option=orjson.OPT_INDENT_2).decode())


@main.command()
@connection_options
@_check_timeout_option
@click.pass_context
def health(ctx: click.Context, connection: Connection, timeout: float) -> None:
    """Check that the server and the ubm model are ready.

    \b
    Exit status:
      0  the server and the model are ready (at one endpoint at least)
      2  the server cannot be reached, or it or the model is not ready
    """
    with connection.client(timeout_s=timeout) as client:
        ready = client.is_ready()
    where = f"model {contract.ENSEMBLE!r} at {connection.url}"
    if ready:
        click.echo(f"ready: {where}")
    else:
        click.echo(f"not ready: {where}, or no server there", err=True)
    ctx.exit(EXIT_OK if ready else EXIT_SERVER_FAILED)
