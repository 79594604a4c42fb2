"""NVIDIA ``perf_analyzer`` on the ``ubm`` ensemble: find it, feed it our records, read its report.

The binary ships in the ``tritonclient`` wheel (same release as the server). It needs Debian's
``libb64-0d`` and ``libcudart.so.12`` (PyPI ``nvidia-cuda-runtime-cu12``, put on
``LD_LIBRARY_PATH`` here); it uses no GPU. `problem` says why it cannot run, where it cannot.
Used by `comparison` (``make bench-cli``) and ``loadtest/capacity.py``'s cross-check. It
raises `PerfAnalyzerError` (a `BenchError`) when it cannot run or fails.

Callers start it while gRPC channels are open in their process. gRPC's fork support would
restart its poller in the forked child, which then dies on the closed epoll descriptor before it
can exec ("epoll_wait error: Bad file descriptor", grpc/grpc#43055; seen from the gevent-patched
capacity ramp). Programs that start it set ``GRPC_ENABLE_FORK_SUPPORT=false`` before gRPC loads.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import InferenceServerClient

from ubm import contract
from ubm_build.bench.errors import PerfAnalyzerError
from ubm_build.bench.processes import run_timed
from ubm_build.bench.served import ensemble_counts

CUDA_RUNTIME = "libcudart.so.12"
PASS_LINE = re.compile(r"Pass \[(\d+)\] throughput: ([0-9.eE+-]+) infer/sec")


def binary() -> Path:
    """The ``perf_analyzer`` the ``tritonclient`` wheel installed beside this interpreter."""
    return Path(sysconfig.get_path("scripts")) / "perf_analyzer"


def cuda_runtime_dir() -> Path | None:
    """The directory holding ``libcudart.so.12`` from the ``nvidia-cuda-runtime-cu12`` wheel."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except ModuleNotFoundError:
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        lib = Path(location) / "lib"
        if (lib / CUDA_RUNTIME).is_file():
            return lib
    return None


def environment() -> dict[str, str]:
    """This process's environment, with the CUDA runtime's directory on ``LD_LIBRARY_PATH``."""
    env = dict(os.environ)
    lib = cuda_runtime_dir()
    if lib is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p
        )
    return env


def problem() -> str | None:
    """Why perf_analyzer cannot run here, or None when it can."""
    path = binary()
    if not path.is_file():
        return f"{path} is missing (it comes with the tritonclient wheel)"
    if cuda_runtime_dir() is None:
        return f"{CUDA_RUNTIME} is missing: pip install nvidia-cuda-runtime-cu12"
    try:
        result = subprocess.run(
            [str(path), "--help"],
            env=environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{path} --help failed: {e}"
    output = result.stdout + result.stderr
    if "error while loading shared libraries" in output:
        line = next(s for s in output.splitlines() if "error while loading" in s)
        hint = " (apt-get install -y libb64-0d)" if "libb64" in line else ""
        return f"perf_analyzer cannot start: {line.strip()}{hint}"
    if "perf_analyzer" not in output and "--concurrency-range" not in output:
        return f"{path} --help printed no usage (exit {result.returncode}): {output[-300:]}"
    return None


def write_input_data(lines: list[bytes], path: Path) -> Path:
    """perf_analyzer's ``--input-data`` JSON: one data step per record, batch-1 shape [1].

    A BYTES element is given as a plain JSON string; perf_analyzer adds the 4-byte length.
    """
    steps = [
        {contract.RECORDS: {"content": [line.decode("utf-8")], "shape": [1]}} for line in lines
    ]
    path.write_text(json.dumps({"data": steps}))
    return path


@dataclass(frozen=True)
class PerfAnalyzerSettings:
    """How perf_analyzer loads the ensemble, and when it stops measuring."""

    batch_size: int
    """Records per request (``-b``)."""
    concurrency: int
    """Requests in flight."""
    measurement_interval_ms: int = 5000
    """One measurement window."""
    max_trials: int = 4
    """Windows at most, when no three agree."""
    stability_percentage: float = 10.0
    """Three windows agree when their throughputs are within this percentage."""

    def arguments(self) -> list[str]:
        """perf_analyzer's command-line arguments for these settings."""
        return [
            *("-b", str(self.batch_size)),
            *("--concurrency-range", f"{self.concurrency}:{self.concurrency}"),
            *("--measurement-interval", str(self.measurement_interval_ms)),
            *("--max-trials", str(self.max_trials)),
            *("--stability-percentage", str(self.stability_percentage)),
        ]

    def timeout_s(self) -> float:
        """How long a run may take: every window, the drain, and a margin."""
        return self.measurement_interval_ms / 1000 * (self.max_trials + 2) + 120


@dataclass(frozen=True)
class PerfAnalyzerResult:
    """One perf_analyzer run, as the results files record it."""

    records_per_s: float
    """perf_analyzer's Inferences/Second: requests/s x batch size."""
    stable: bool
    """Whether three windows agreed (if not: the mean of the last three that had requests)."""
    p50_latency_ms: float | None
    p99_latency_ms: float | None
    passes: int
    """Measurement windows that recorded requests."""
    seconds: float
    cpu_s: float
    """CPU time (user + system) perf_analyzer used, all of its threads."""
    server_records_per_request: float | None
    """Records per request of the ensemble during the run, from the server's statistics."""
    command: str


def _ensemble_counts(url: str) -> tuple[int, int] | None:
    """(successful requests, records inferred) of the ensemble so far, from the server."""
    try:
        with InferenceServerClient(url) as client:
            return ensemble_counts(client)
    except Exception:  # statistics are a cross-check only
        return None


def parse_passes(stdout: str) -> list[float]:
    """Throughput (records/s) of every measurement pass perf_analyzer printed."""
    return [float(m.group(2)) for m in PASS_LINE.finditer(stdout)]


def parse_csv(text: str) -> dict[str, str]:
    """The first data row of perf_analyzer's ``-f`` CSV report, by column name."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise PerfAnalyzerError("perf_analyzer's CSV report has no row")
    return rows[0]


def run(
    url: str, input_data: Path, settings: PerfAnalyzerSettings, workdir: Path
) -> PerfAnalyzerResult:
    """perf_analyzer on the ensemble at `url` with `input_data` (`write_input_data`) until three
    windows agree or `settings.max_trials` windows have passed; its log and CSV go to `workdir`.

    Raises:
        PerfAnalyzerError: it ran past its time or failed before any window.
    """
    report = workdir / "perf_analyzer.csv"
    command = [
        str(binary()),
        *("-m", contract.ENSEMBLE, "-i", "grpc", "-u", url),
        *settings.arguments(),
        *("--input-data", str(input_data)),
        *("--percentile", "50", "-f", str(report)),
        "-v",  # prints every measurement pass
    ]
    timeout_s = settings.timeout_s()
    before = _ensemble_counts(url)
    try:
        finished = run_timed(command, env=environment(), timeout_s=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise PerfAnalyzerError(f"perf_analyzer ran past {timeout_s:.0f} s") from e
    after = _ensemble_counts(url)
    output = finished.process.stdout + finished.process.stderr
    (workdir / "perf_analyzer.log").write_text(output)
    passes = parse_passes(output)
    if finished.process.returncode == 0 and report.is_file():
        row = parse_csv(report.read_text())
        records_per_s = float(row["Inferences/Second"])
        p50 = float(row["p50 latency"]) / 1000 if row.get("p50 latency") else None
        p99 = float(row["p99 latency"]) / 1000 if row.get("p99 latency") else None
        stable = True
    elif passes:
        # Not stable within max_trials: report the mean of the last (up to) three passes.
        records_per_s = sum(passes[-3:]) / len(passes[-3:])
        p50 = p99 = None
        stable = False
    else:
        raise PerfAnalyzerError(
            f"perf_analyzer failed (exit {finished.process.returncode}):\n{output[-3000:]}"
        )
    per_request = None
    if before and after and after[0] > before[0]:
        per_request = (after[1] - before[1]) / (after[0] - before[0])
    return PerfAnalyzerResult(
        records_per_s=records_per_s,
        stable=stable,
        p50_latency_ms=p50,
        p99_latency_ms=p99,
        passes=len(passes),
        seconds=round(finished.seconds, 2),
        cpu_s=round(finished.cpu_s, 2),
        server_records_per_request=per_request,
        command=shlex.join(command),
    )
