"""Opening the CLI's output files without ever destroying data.

Every output is checked and opened before any is truncated, so a bad ``--errors`` path cannot
empty a good ``-o`` file, and no output may be the input file or another output (compared by
device and inode, so symlinks and hard links count).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO


class OutputError(Exception):
    """An output file cannot be used; the message names the option and the reason."""


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()  # follows symlinks: a link to the input is the input
    except OSError:  # missing, or unusable: `open_outputs` says why
        return None


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_distinct(input_stream: BinaryIO, outputs: Mapping[str, Path]) -> None:
    """Refuse an output that is the input file or another output.

    Args:
        input_stream: the open input (a file, or stdin redirected from one).
        outputs: the output files by option name, ``-`` (stdout) left out.

    Raises:
        OutputError: two of them are the same file.
    """
    try:
        seen = {"the input file": os.fstat(input_stream.fileno())}
    except (OSError, ValueError):  # an in-memory stream (tests) has no file descriptor
        seen = {}
    for option, path in outputs.items():
        info = _stat(path)
        if info is None:
            continue
        for other, other_info in seen.items():
            if _same(info, other_info):
                raise OutputError(f"{option} {path} is {other}: refusing to overwrite it")
        seen[f"the {option} file"] = info


@contextlib.contextmanager
def open_outputs(
    outputs: Mapping[str, Path], *, cut_to: Mapping[str, int]
) -> Iterator[dict[str, BinaryIO]]:
    """Open every output for appending, then cut the ones named in ``cut_to`` to that length.

    A file that cannot be opened leaves every file as it was: files this call created are
    removed again, and nothing is cut before all are open.

    Args:
        outputs: the output files by option name.
        cut_to: bytes to keep of an output by option name (0 empties it); the outputs not named
            are appended to. Only regular files are cut.

    Yields:
        The open binary streams by option name, positioned at their end.

    Raises:
        OutputError: an output is a directory, in a missing directory, or not writable.
    """
    opened: dict[str, BinaryIO] = {}
    created: list[Path] = []
    try:
        for option, path in outputs.items():
            existed = path.exists()
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            except OSError as e:
                reason = "no such directory" if e.errno == errno.ENOENT else e.strerror
                raise OutputError(f"{option} {path}: {reason}") from e
            if not existed:
                created.append(path)
            opened[option] = os.fdopen(fd, "ab")
    except BaseException:
        for stream in opened.values():
            stream.close()
        for path in created:
            path.unlink(missing_ok=True)
        raise
    with contextlib.ExitStack() as stack:
        for option, stream in opened.items():
            stack.enter_context(stream)
            if option in cut_to and stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                stream.truncate(cut_to[option])
        yield opened
