"""Where the project's files are: the defaults of every command's path options."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CSV = PROJECT_ROOT / "data" / "taobao_userbehavior" / "UserBehavior.csv"
ARTIFACTS = PROJECT_ROOT / "artifacts"
MODEL_DIR = ARTIFACTS / "model"
"""The trained model: `ubm-build train` writes it, export and the benchmarks read it."""
ONNX_DIR = ARTIFACTS / "onnx"
"""The exported graphs and ``variants.json``."""
REPOSITORY = PROJECT_ROOT / "model_repository"
REPORTS = PROJECT_ROOT / "reports"
RESULTS = PROJECT_ROOT / "results"
RUN_DIR = PROJECT_ROOT / ".run"
"""Servers' logs, pid files and tokens."""
EXAMPLE_RECORDS = PROJECT_ROOT / "examples" / "sessions.jsonl"


def shown(path: Path) -> str:
    """`path` relative to the project when it is inside it, for results files."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
