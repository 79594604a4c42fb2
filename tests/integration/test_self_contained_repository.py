"""The model repository serves on its own: our packages are never imported by the server.

A tritonserver runs on a tiny repository (with a drift reference, as a full build writes it)
with its python-backend stubs in a virtual environment of their own: it sees the test
environment's third-party packages (numpy, tokenizers, onnxruntime) but not our editable
installs, and its own ``ubm_build`` and ``ubm`` packages fail on import. Scores through the
ensemble must still equal the in-process ONNX scores, so ``preprocess`` ran on the copies in
its version directory, and that directory must hold exactly what it imports.

The stubs run Python isolated (``PYTHONPATH`` does not reach them) and find their interpreter,
hence their virtual environment, through ``PATH``: the server is started with the bare
environment's ``bin`` first there (`server.TritonServer`'s ``env``).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import write_tiny_repository

from ubm import UbmClient, contract, parse_record
from ubm_build import export
from ubm_build.inputs import drift, snapshot
from ubm_build.model.train import events_of
from ubm_build.serving import repository, server, versions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RECORDS = 256
POISONED = ("ubm_build", "ubm")
THIRD_PARTY = {"numpy", "tokenizers", "triton_python_backend_utils"}
"""What the preprocess directory may import besides the standard library and its own files."""
SITECUSTOMIZE = """\
import os
from pathlib import Path

(Path(__file__).parent / "started" / str(os.getpid())).touch()
"""
"""Marks each interpreter that starts in the bare environment."""


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A virtual environment on this one's interpreter whose site-packages hold poisoned
    ``ubm_build`` and ``ubm`` and a ``.pth`` naming this environment's site-packages (a
    ``.pth`` line adds a directory but runs none of its ``.pth`` files: the editable installs
    of our packages stay out)."""
    venv = tmp_path_factory.mktemp("bare_venv")
    base = Path(sys.base_prefix)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    (venv / "pyvenv.cfg").write_text(
        f"home = {base / 'bin'}\ninclude-system-site-packages = false\n"
        f"version = {sys.version_info.major}.{sys.version_info.minor}"
        f".{sys.version_info.micro}\n"
    )
    (venv / "bin").mkdir()
    (venv / "bin" / "python3").symlink_to(Path(sys._base_executable).resolve())
    site_packages = venv / "lib" / f"python{version}" / "site-packages"
    site_packages.mkdir(parents=True)
    (site_packages / "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for package in POISONED:
        (site_packages / package).mkdir()
        (site_packages / package / "__init__.py").write_text(
            f"raise ImportError('poisoned: the served repository imported {package}')\n"
        )
    (site_packages / "started").mkdir()
    (site_packages / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return venv


def started_in(venv: Path) -> set[int]:
    """The processes whose interpreter started in `venv`."""
    [started] = venv.glob("lib/python*/site-packages/started")
    return {int(path.name) for path in started.iterdir()}


def bare_path(venv: Path) -> str:
    """``PATH`` with `venv`'s ``bin`` before this environment's."""
    return os.pathsep.join((str(venv / "bin"), server.server_environment()["PATH"]))


@pytest.fixture(scope="module")
def full_repository(tiny_model, tiny_onnx, tiny_reader, examples, tmp_path_factory) -> Path:
    """The tiny model's repository with a drift reference, like `ubm-build repository`'s."""
    model, model_dir = tiny_model
    train = events_of(examples["train"][:500])
    reference = drift.reference_of(
        train,
        tiny_reader(train).truncated,
        model.spec.max_length,
        holdout=events_of(examples["valid"][:200]),
    )
    return write_tiny_repository(
        tmp_path_factory.mktemp("self_contained") / "repository",
        model,
        model_dir,
        tiny_onnx,
        canary=[],
        drift_reference=reference,
    )


@pytest.fixture(scope="module")
def preprocess_files(full_repository) -> dict[str, Path]:
    """The files of ``preprocess``'s version directory as written, before a server ran on it
    (Python then adds its ``__pycache__``)."""
    directory = versions.version_dir(full_repository, contract.PREPROCESS)
    return {path.name: path for path in directory.iterdir()}


@pytest.fixture(scope="module")
def bare_triton(
    full_repository, preprocess_files, bare_venv, tmp_path_factory
) -> Iterator[server.TritonServer]:
    """A server whose python-backend stubs run in the bare environment."""
    with server.TritonServer(
        full_repository,
        workdir=tmp_path_factory.mktemp("bare_triton"),
        ports=server.Ports.free(),
        env={"PATH": bare_path(bare_venv)},
    ) as triton:
        yield triton


def test_the_bare_environment_has_our_dependencies_but_not_our_packages(bare_venv):
    python = str(bare_venv / "bin" / "python3")
    env = {**os.environ, "PATH": bare_path(bare_venv)}
    for package in POISONED:
        done = subprocess.run(
            [python, "-I", "-c", f"import {package}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert f"poisoned: the served repository imported {package}" in done.stderr
    done = subprocess.run(
        [python, "-I", "-c", "import sys, numpy, tokenizers, onnxruntime; print(sys.prefix)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == bare_venv


def test_every_stub_runs_in_the_bare_environment(bare_triton, bare_venv):
    stubs = [
        child.pid
        for child in psutil.Process(bare_triton.pid).children(recursive=True)
        if "triton_python_backend_stub" in " ".join(child.cmdline())
    ]
    assert len(stubs) >= 3  # preprocess, encoder and head: one instance each at least
    assert set(stubs) <= started_in(bare_venv)
    assert "poisoned" not in bare_triton.log_path.read_text()


def test_scores_equal_in_process_onnx_without_our_packages(
    bare_triton, tiny_onnx, tiny_reader, examples
):
    records = [ex.to_record() for ex in examples["test"][:RECORDS]]
    with UbmClient(bare_triton.grpc_url, batch_size=64) as client:
        scores = client.score(records)
    assert [s.id for s in scores] == [r["id"] for r in records]
    expected, _ = export.onnx_predict(
        *tiny_onnx, tiny_reader, [parse_record(r).events for r in records]
    )
    np.testing.assert_allclose(
        [s.purchase_probability for s in scores], expected, rtol=0, atol=1e-5
    )


def _imports(path: Path) -> set[str]:
    """Top-level modules `path` imports, except in the ``except ImportError`` fallbacks (the
    source tree's imports, which the served copies never reach)."""
    fallbacks = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and (
            isinstance(node.type, ast.Name) and node.type.id == "ImportError"
        ):
            fallbacks |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in fallbacks:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - {"__future__"}


def test_the_preprocess_directory_holds_exactly_what_it_imports(preprocess_files):
    modules = {name.removesuffix(".py") for name in preprocess_files if name.endswith(".py")}
    reached, queue = set(), ["model"]
    while queue:
        module = queue.pop()
        if module in reached:
            continue
        reached.add(module)
        for name in _imports(preprocess_files[f"{module}.py"]):
            if name in modules:
                queue.append(name)
            else:
                assert name in sys.stdlib_module_names or name in THIRD_PARTY, (module, name)
    assert reached == modules, f"copied but never imported: {modules - reached}"
    served = {Path(module.__file__).name for module in repository.SERVED_MODULES}
    assert set(preprocess_files) == {
        *served,
        "model.py",
        "responses.py",
        "tokenizer.json",
        snapshot.FILE,
        drift.REFERENCE_FILE,
        drift.SEEN_IDS_FILE,
    }
    assert all(path.is_file() for path in preprocess_files.values())
