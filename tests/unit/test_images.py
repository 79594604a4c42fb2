"""The container image files under deploy/images, checked without a container tool: the base
images cannot be pulled here. Linted (hadolint, shellcheck); the CPU image's pins equal the
project's; its entry point parses as `ubm-serve serve`; the GPU image's entry point gives
NVIDIA's tritonserver the hardening `ubm-serve serve` gives the pip-installed one."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ubm import contract
from ubm_build import paths
from ubm_build.serving import cli, server

IMAGES = paths.PROJECT_ROOT / "deploy" / "images"
DOCKERFILES = sorted(IMAGES.glob("Dockerfile.*"))
ENTRYPOINT = IMAGES / "triton-entrypoint.sh"
BIN = Path(sys.executable).parent


def test_there_is_a_cpu_and_a_gpu_image():
    assert [f.name for f in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda f: f.name)
def test_dockerfiles_pass_hadolint(dockerfile):
    result = subprocess.run([BIN / "hadolint", dockerfile], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda f: f.name)
def test_images_run_as_a_non_root_user_with_a_health_check(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*health", text, re.M | re.S)
    assert "ARG MODEL_REPOSITORY=" in text


def test_the_gpu_entry_point_passes_shellcheck():
    result = subprocess.run([BIN / "shellcheck", ENTRYPOINT], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.match(r'^\s*"?([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^";\s]+)', line)
        if match:
            found[match[1].lower()] = match[3]
    return found


def test_cpu_image_pins_equal_the_projects():
    image = pins((IMAGES / "requirements-cpu.txt").read_text().splitlines())
    project = {
        **pins((paths.PROJECT_ROOT / "requirements-dev.txt").read_text().splitlines()),
        **pins((paths.PROJECT_ROOT / "build" / "pyproject.toml").read_text().splitlines()),
    }
    assert image, "no pins read"
    assert {name: project.get(name) for name in image} == image


def entrypoint_arguments(dockerfile: Path) -> list[str]:
    match = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile.read_text(), re.M)
    assert match, f"{dockerfile.name} has no exec-form ENTRYPOINT"
    return [a.strip().strip('"') for a in match[1].strip("[]").split(",")]


def test_cpu_image_runs_ubm_serve_serve_in_the_foreground(tmp_path):
    program, command, *arguments = entrypoint_arguments(IMAGES / "Dockerfile.cpu")
    assert (program, command) == ("ubm-serve", "serve")
    assert "--detach" not in arguments
    context = cli.serve_command.make_context("serve", ["--help"], resilient_parsing=True)
    given, rest, _ = cli.serve_command.make_parser(context).parse_args(arguments)
    assert rest == []
    assert (given["host"], given["repository_dir"], given["run_dir"]) == (
        "0.0.0.0",
        "/models",
        "/run/ubm",
    )


def run_gpu_entrypoint(tmp_path: Path, **environment: str) -> subprocess.CompletedProcess:
    """The GPU image's entry point with a `tritonserver` that prints its arguments, one a line."""
    printer = tmp_path / "print-arguments"
    printer.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    printer.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "TRITONSERVER": str(printer),
        "UBM_RUN_DIR": str(tmp_path / "run"),
        **environment,
    }
    return subprocess.run(
        ["bash", ENTRYPOINT, "--log-verbose=1"], env=env, capture_output=True, text=True
    )


def test_gpu_entry_point_restricts_the_apis_as_ubm_serve_does(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("a-client-token-of-24-chars\n")
    result = run_gpu_entrypoint(tmp_path, UBM_TOKEN_FILE=str(token_file))
    assert result.returncode == 0, result.stderr
    arguments = result.stdout.splitlines()
    admin_token = (tmp_path / "run" / server.ADMIN_TOKEN_FILE).read_text()
    assert len(admin_token) == 48
    assert (tmp_path / "run" / server.ADMIN_TOKEN_FILE).stat().st_mode & 0o077 == 0
    triton = server.TritonServer(
        tmp_path / "repository", workdir=tmp_path / "workdir", token="a-client-token-of-24-chars"
    )
    expected = [a for a in triton.command(admin_token) if "restricted" in a]
    assert sorted(a for a in arguments if "restricted" in a) == sorted(expected)
    assert "--model-control-mode=explicit" in arguments
    assert f"--load-model={contract.ENSEMBLE}" in arguments
    assert "--model-repository=/models" in arguments
    assert "--http-address=0.0.0.0" in arguments
    assert arguments[-1] == "--log-verbose=1"


def test_gpu_entry_point_serves_tls_and_keeps_http_on_loopback(tmp_path):
    result = run_gpu_entrypoint(
        tmp_path,
        UBM_TLS_CERT="/etc/ubm/tls/tls.crt",
        UBM_TLS_KEY="/etc/ubm/tls/tls.key",
        UBM_TLS_CLIENT_CA="/etc/ubm/tls/ca.crt",
        UBM_MODEL_REPOSITORY="s3://bucket/ubm",
        UBM_GRPC_PORT="9001",
    )
    arguments = result.stdout.splitlines()
    for flag in (
        "--grpc-use-ssl=true",
        "--grpc-server-cert=/etc/ubm/tls/tls.crt",
        "--grpc-server-key=/etc/ubm/tls/tls.key",
        "--grpc-use-ssl-mutual=true",
        "--grpc-root-cert=/etc/ubm/tls/ca.crt",
        "--http-address=127.0.0.1",
        "--model-repository=s3://bucket/ubm",
        "--grpc-port=9001",
    ):
        assert flag in arguments
    assert not any(a.startswith("--grpc-restricted-protocol=inference") for a in arguments)


def test_gpu_entry_point_refuses_a_short_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("short\n")
    result = run_gpu_entrypoint(tmp_path, UBM_TOKEN_FILE=str(token_file))
    assert result.returncode == 2
    assert "shorter than 16 characters" in result.stderr
    assert result.stdout == ""


def test_health_fails_with_a_message_when_nothing_listens(monkeypatch):
    monkeypatch.setenv("UBM_HTTP_PORT", str(server.Ports.free().http))
    result = CliRunner().invoke(cli.main, ["health", "--live"])
    assert result.exit_code == 1
    assert "/v2/health/live" in result.output


def test_serving_commands_import_neither_pytorch_nor_the_exporters():
    code = (
        "import sys, ubm_build.serving.cli; heavy = {'torch', 'transformers', 'onnx', 'openvino',"
        " 'onnxruntime', 'nncf', 'sklearn', 'lightgbm'}; print(sorted(heavy & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", shlex.join([result.stdout, result.stderr])
