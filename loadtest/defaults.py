"""Paths and defaults shared by the load-test scripts.

Standard library only, so a script can import it before Locust patches the process for gevent.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = ROOT / "model_repository"
DEFAULT_ONNX_DIR = ROOT / "artifacts" / "onnx"
"""Where `ubm-build export` writes the encoder variants (to name the served one)."""
RUN_DIR = ROOT / ".run"
"""Logs of the tritonservers the scripts start."""
RESULTS_DIR = ROOT / "results"
DEFAULT_RECORDS_FILE = ROOT / "examples" / "sessions.jsonl"
"""300 real test-day sessions (one JSON record a line), the same file `make demo` scores."""
DEFAULT_BATCH_SIZE = 1
"""Records per request: one user scored per call, as an online service would."""
DEFAULT_MODEL_DIR = ROOT / "artifacts" / "model"
"""Where `ubm-build train` writes the model (to write repositories from it)."""
