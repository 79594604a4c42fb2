"""The CPU image's entry point, run as the image runs it (PID 1's command, in the foreground):
ready for the health check, and a SIGTERM (what Kubernetes and `docker stop` send) ends it
cleanly with status 0. The image itself is not built here: its base image cannot be pulled."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ubm_build import paths
from ubm_build.serving import server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

UBM_SERVE = str(Path(sys.executable).parent / "ubm-serve")


def image_command(repository: Path, run_dir: Path) -> list[str]:
    """The CPU image's ENTRYPOINT, with its /models and /run/ubm replaced."""
    text = (paths.PROJECT_ROOT / "deploy" / "images" / "Dockerfile.cpu").read_text()
    entrypoint = re.search(r"^ENTRYPOINT \[(.*)\]$", text, re.M)[1]
    arguments = [a.strip().strip('"') for a in entrypoint.split(",")]
    replaced = {"/models": str(repository), "/run/ubm": str(run_dir), "ubm-serve": UBM_SERVE}
    return [replaced.get(a, a) for a in arguments]


def health(*flags: str, env: dict[str, str]) -> int:
    return subprocess.run([UBM_SERVE, "health", *flags], env=env, capture_output=True).returncode


def test_the_cpu_image_command_serves_reports_health_and_stops_on_sigterm(
    tiny_repository, tmp_path
):
    ports = server.Ports.free()
    env = {
        **os.environ,
        "UBM_GRPC_PORT": str(ports.grpc),
        "UBM_HTTP_PORT": str(ports.http),
        "UBM_METRICS_PORT": str(ports.metrics),
    }
    assert health(env=env) == 1
    process = subprocess.Popen(
        image_command(tiny_repository, tmp_path / "run"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while health(env=env) != 0:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "not ready in 180 s"
            time.sleep(1)
        assert health("--live", env=env) == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stderr.read()
        assert health("--live", env=env) == 1
        assert not (tmp_path / "run" / "tritonserver.pid").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
