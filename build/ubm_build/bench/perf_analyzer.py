"""NVIDIA ``perf_analyzer`` on the ``ubm`` ensemble: find it, feed it our records, read its report.

The binary ships in the ``tritonclient`` wheel (same release as the server). It needs Debian's
``libb64-0d`` and ``libcudart.so.12`` (PyPI ``nvidia-cuda-runtime-cu12``, put on
``LD_LIBRARY_PATH`` here); it uses no GPU. `problem` says why it cannot run, where it cannot.
Used by `bench_cli` (``make bench-cli``) and ``loadtest/capacity.py``'s cross-check.

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
import resource
import shlex
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import click
from tritonclient.grpc import InferenceServerClient

from ubm import contract

CUDA_RUNTIME = "libcudart.so.12"
PASS_LINE = re.compile(r"Pass \[(\d+)\] throughput: ([0-9.eE+-]+) infer/sec")


class PerfAnalyzerError(click.ClickException):
    """perf_analyzer could not be run, or failed."""


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
class PerfAnalyzerResult:
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
            stats = client.get_inference_statistics(contract.ENSEMBLE, as_json=True)
    except Exception:  # statistics are a cross-check only
        return None
    for model in stats.get("model_stats", []):
        if model.get("name") == contract.ENSEMBLE:
            success = model.get("inference_stats", {}).get("success", {})
            return int(success.get("count", 0)), int(model.get("inference_count", 0))
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
    url: str,
    input_data: Path,
    *,
    batch_size: int,
    concurrency: int,
    measurement_interval_ms: int,
    max_trials: int,
    stability_percentage: float,
    workdir: Path,
) -> PerfAnalyzerResult:
    report = workdir / "perf_analyzer.csv"
    command = [
        str(binary()),
        "-m",
        contract.ENSEMBLE,
        "-i",
        "grpc",
        "-u",
        url,
        "-b",
        str(batch_size),
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--input-data",
        str(input_data),
        "--measurement-interval",
        str(measurement_interval_ms),
        "--max-trials",
        str(max_trials),
        "--stability-percentage",
        str(stability_percentage),
        "--percentile",
        "50",
        "-f",
        str(report),
        "-v",  # prints every measurement pass
    ]
    # perf_analyzer stops when three windows agree, or after max_trials; then it drains.
    timeout_s = measurement_interval_ms / 1000 * (max_trials + 2) + 120
    before = _ensemble_counts(url)
    cpu_before = children_cpu_s()
    started = time.perf_counter()
    try:
        result = subprocess.run(
            command,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise PerfAnalyzerError(f"perf_analyzer ran past {timeout_s:.0f} s") from e
    seconds = time.perf_counter() - started
    cpu_s = children_cpu_s() - cpu_before
    after = _ensemble_counts(url)
    output = result.stdout + result.stderr
    (workdir / "perf_analyzer.log").write_text(output)
    passes = parse_passes(output)
    if result.returncode == 0 and report.is_file():
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
            f"perf_analyzer failed (exit {result.returncode}):\n{output[-3000:]}"
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
        seconds=round(seconds, 2),
        cpu_s=round(cpu_s, 2),
        server_records_per_request=per_request,
        command=shlex.join(command),
    )


def read_records(path: Path, limit: int | None) -> list[bytes]:
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    lines = lines[:limit] if limit else lines
    if not lines:
        raise PerfAnalyzerError(f"{path} holds no records")
    return lines


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
