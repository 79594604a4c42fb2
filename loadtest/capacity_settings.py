"""What one capacity ramp measures and where: `CapacitySettings`, built from the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ONNX_DIR,
    DEFAULT_RECORDS_FILE,
    DEFAULT_REPOSITORY,
    RESULTS_DIR,
)

DEFAULT_USER_COUNTS = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)
DEFAULT_SLO_MS = 100.0
DEFAULT_STEP_SECONDS = 10.0
DEFAULT_WARMUP_SECONDS = 3.0


@dataclass(frozen=True)
class CapacitySettings:
    """The settings of one `make capacity` run, which travel together from parsing to the JSON."""

    slo_ms: float = DEFAULT_SLO_MS
    """The p99 latency a step may reach and still count."""
    user_counts: tuple[int, ...] = DEFAULT_USER_COUNTS
    """One step per count, in this order, until one misses the SLO."""
    step_seconds: float = DEFAULT_STEP_SECONDS
    """Measured time per step."""
    warmup_seconds: float = DEFAULT_WARMUP_SECONDS
    """Time per step before the measurement, not measured."""
    batch_size: int = DEFAULT_BATCH_SIZE
    records_file: Path = DEFAULT_RECORDS_FILE
    repository: Path = DEFAULT_REPOSITORY
    """Served on free ports for the ramp, unless `url` is given."""
    onnx_dir: Path = DEFAULT_ONNX_DIR
    url: str | None = None
    """An already running server's gRPC address to load instead of `repository`."""
    perf_analyzer: bool = True
    """Cross-check the capacity step with NVIDIA's perf_analyzer."""
    out_dir: Path = RESULTS_DIR

    def describe(self, url: str) -> str:
        """The ramp's plan against the server at `url`, for its log."""
        return (
            f"ramping users {list(self.user_counts)} against {url}:"
            f" {self.batch_size} record(s) per request,"
            f" {self.warmup_seconds:g} s warm-up + {self.step_seconds:g} s measured per step,"
            f" SLO p99 <= {self.slo_ms:g} ms"
        )
