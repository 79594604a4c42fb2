"""The build package's layers (`ubm_build/__init__.py`): no module imports from a higher layer,
and only the command modules use click."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ubm_build

PACKAGE = Path(ubm_build.__file__).parent
LAYERS = (
    "paths",
    "options",
    "inputs",
    "data",
    "model",
    "export",
    "serving",
    "bench",
    "deploy",
    "steps",
    "cli",
)
"""Lowest first; `options` holds the click options shared by the command modules."""
CLICK_USERS = {
    "options.py",
    "cli.py",
    "serving/cli.py",
    "deploy/__main__.py",
    "bench/commands.py",
    "bench/benchmark.py",
    "bench/tune.py",
    "bench/cli_vs_perf_analyzer.py",
    "bench/first_request.py",
    "bench/gpu.py",
}
"""Where click may be imported: the command line, its shared options, the bench commands."""


SERVED_MODELS = "ubm_build.serving.triton_models."
"""The python-backend models: copied into the repository, they import nothing of ubm_build but
each other, so every layer may run them in process (the checks then run what the server runs)."""


def modules() -> list[Path]:
    # The python-backend models themselves: tests/integration/test_self_contained_repository.py.
    return sorted(p for p in PACKAGE.rglob("*.py") if "triton_models" not in p.parts)


def layer_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported(path: Path) -> set[str]:
    """The top-level names imported: ``ubm_build.<layer>`` as ``<layer>``, others as they are."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "ubm_build":
                names.update(f"ubm_build.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


def test_every_module_belongs_to_a_layer():
    assert {layer_of(path) for path in modules()} - {"__init__"} <= set(LAYERS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    own = layer_of(path)
    if own == "__init__":
        return
    for name in imported(path):
        if name.startswith("ubm_build.") and not name.startswith(SERVED_MODELS):
            layer = name.split(".")[1]
            assert LAYERS.index(layer) <= LAYERS.index(own), f"{own} imports {name}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_command_modules_use_click(path):
    if path.relative_to(PACKAGE).as_posix() not in CLICK_USERS:
        assert not any(name.split(".")[0] == "click" for name in imported(path)), path
