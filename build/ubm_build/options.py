"""Click options shared by `ubm-build` and the benchmark commands, each defined once.

A command that reads a path asks click to check that it exists; a command that writes it
(``written=True``) does not. Defaults come from `ubm_build.paths`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ubm_build import paths

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _directory(flag: str, name: str, default: Path, help_text: str, written: bool) -> Decorator:
    return click.option(
        flag,
        name,
        type=click.Path(exists=not written, file_okay=False, path_type=Path),
        default=default,
        show_default=True,
        help=help_text,
    )


def model_dir(*, written: bool = False) -> Decorator:
    """``--model-dir``: the trained model."""
    return _directory("--model-dir", "model_dir", paths.MODEL_DIR, "The trained model.", written)


def onnx_dir(*, written: bool = False) -> Decorator:
    """``--onnx-dir``: the exported graphs and their checks."""
    return _directory(
        "--onnx-dir", "onnx_dir", paths.ONNX_DIR, "The exported ONNX graphs.", written
    )


def repository(
    *, written: bool = False, help_text: str = "The Triton model repository."
) -> Decorator:
    """``--repository``, passed as ``repository_dir``."""
    return _directory("--repository", "repository_dir", paths.REPOSITORY, help_text, written)


def csv() -> Decorator:
    """``--csv``: the Taobao UserBehavior events."""
    return click.option(
        "--csv",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=paths.DEFAULT_CSV,
        show_default=True,
        help="UserBehavior.csv to train and evaluate on.",
    )


def run_dir(default: Path = paths.RUN_DIR) -> Decorator:
    """``--run-dir``: where servers' logs, pid files and tokens go."""
    return _directory(
        "--run-dir", "run_dir", default, "Where the server's log, pid file and tokens go.", True
    )


def out_file(default: Path) -> Decorator:
    """``--out``: the results file."""
    return click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        default=default,
        show_default=True,
        help="Where the results go (JSON).",
    )
