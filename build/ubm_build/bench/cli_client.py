"""``ubm-client score`` as users run it, timed from outside: wall time, start-up, CPU time, and
the rate the server saw in the middle of the run."""

from __future__ import annotations

import os
import shlex
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import InferenceServerClient

from ubm_build.bench.errors import BenchError
from ubm_build.bench.processes import Finished, run_timed
from ubm_build.bench.served import ensemble_counts


def ubm_client_binary() -> Path:
    """The ``ubm-client`` installed beside this interpreter."""
    return Path(sysconfig.get_path("scripts")) / "ubm-client"


@dataclass(frozen=True)
class CliResult:
    """One ``ubm-client score`` run."""

    lines: int
    seconds: float
    """Wall time of the whole command."""
    startup_s: float
    """Wall time of the same command on an empty file: interpreter, imports, channel."""
    records_per_s: float
    """lines / seconds."""
    records_per_s_excluding_startup: float
    server_steady_records_per_s: float | None
    """Records/s the server finished for the CLI between 20% and 80% of its run: no start-up,
    ramp-up or tail, like perf_analyzer's windows."""
    cpu_s: float
    """CPU time (user + system) the CLI process used."""
    command: str


def cli_command(url: str, path: Path, batch_size: int, concurrency: int) -> list[str]:
    """``ubm-client score`` on `path`, its scores thrown away."""
    return [
        str(ubm_client_binary()),
        *("score", str(path), "--url", url),
        *("--batch-size", str(batch_size), "--concurrency", str(concurrency)),
        *("-q", "-o", os.devnull),
    ]


def _run_to_success(command: list[str]) -> Finished:
    """Run `command`, which must succeed.

    Raises:
        BenchError: it exited with an error.
    """
    finished = run_timed(command)
    if finished.process.returncode != 0:
        raise BenchError(
            f"{shlex.join(command)} exited {finished.process.returncode}:\n"
            f"{finished.process.stderr[-3000:]}"
        )
    return finished


class EnsembleSampler:
    """Samples the ensemble's records-inferred counter while a run goes on, every `period_s`."""

    def __init__(self, url: str, period_s: float = 0.5) -> None:
        self.url = url
        self.period_s = period_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            client = InferenceServerClient(self.url)
        except Exception:  # a diagnostic only
            return
        with client:
            while not self._stop.is_set():
                counts = ensemble_counts(client)
                if counts is None:
                    return
                self.samples.append((time.perf_counter(), counts[1]))
                self._stop.wait(self.period_s)

    def __enter__(self) -> EnsembleSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def middle_rate(
        self, start: float, end: float, lo: float = 0.2, hi: float = 0.8
    ) -> float | None:
        """Records/s the server completed between `lo` and `hi` of the run (start to end)."""
        a, b = start + lo * (end - start), start + hi * (end - start)
        inside = [(t, n) for t, n in self.samples if a <= t <= b]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def write_repeated(lines: list[bytes], n_lines: int, path: Path) -> Path:
    """``lines`` over and over, ``n_lines`` in all."""
    with path.open("wb") as f:
        for i in range(n_lines):
            f.write(lines[i % len(lines)] + b"\n")
    return path


def run_cli(
    url: str,
    lines: list[bytes],
    n_lines: int,
    *,
    batch_size: int,
    concurrency: int,
    workdir: Path,
) -> CliResult:
    """``ubm-client score`` on `lines` repeated to `n_lines`, after the same command on an empty
    file for its start-up time; its files go to `workdir`.

    Raises:
        BenchError: the CLI exited with an error.
    """
    empty = workdir / "empty.jsonl"
    empty.write_bytes(b"")
    startup_s = _run_to_success(cli_command(url, empty, batch_size, concurrency)).seconds
    records = write_repeated(lines, n_lines, workdir / "cli.jsonl")
    command = cli_command(url, records, batch_size, concurrency)
    with EnsembleSampler(url) as sampler:
        started = time.perf_counter()
        finished = _run_to_success(command)
    steady = sampler.middle_rate(started, started + finished.seconds)
    return CliResult(
        lines=n_lines,
        seconds=round(finished.seconds, 3),
        startup_s=round(startup_s, 3),
        cpu_s=round(finished.cpu_s, 2),
        records_per_s=n_lines / finished.seconds,
        records_per_s_excluding_startup=n_lines / max(finished.seconds - startup_s, 1e-9),
        server_steady_records_per_s=steady,
        command=shlex.join(command),
    )
