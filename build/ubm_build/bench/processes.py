"""Child processes timed: wall time and the CPU time they used (perf_analyzer, ubm-client)."""

from __future__ import annotations

import resource
import subprocess
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Finished:
    """A command that ran to its end, successfully or not."""

    process: subprocess.CompletedProcess[str]
    seconds: float
    """Wall time."""
    cpu_s: float
    """CPU time (user + system) of the command and its children."""


def children_cpu_s() -> float:
    """CPU time (user + system) of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(
    command: list[str], *, env: dict[str, str] | None = None, timeout_s: float | None = None
) -> Finished:
    """Run `command` to its end, its output captured as text.

    Raises:
        subprocess.TimeoutExpired: it ran past `timeout_s`.
    """
    cpu_before = children_cpu_s()
    started = time.perf_counter()
    process = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    seconds = time.perf_counter() - started
    return Finished(process, seconds, children_cpu_s() - cpu_before)
