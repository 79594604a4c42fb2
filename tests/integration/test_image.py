"""The CPU image built and run for real (scripts/image_check.sh): podman builds
deploy/images/Dockerfile.cpu, the image serves the tiny repository as user 10001, records are
scored through it from here and its health command answers. Needs root, podman, buildah and
debootstrap (`make test` installs them with apt where it may); skips and says why without."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import pytest

from ubm_build import paths

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

SCRIPT = paths.PROJECT_ROOT / "scripts" / "image_check.sh"
TOOLS = ("podman", "buildah", "debootstrap")


def why_not() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed: the image is not built here"
    if os.geteuid() != 0:
        return "building and running the image needs root here"
    return None


@pytest.mark.skipif(why_not() is not None, reason=why_not() or "")
def test_the_cpu_image_builds_serves_and_scores(tiny_repository, examples):
    # The image's user (10001) reads the mounted repository: a world-readable copy of it.
    shared = Path(tempfile.mkdtemp(prefix="ubm-image-"))
    try:
        repository = shutil.copytree(tiny_repository, shared / "repository")
        records = shared / "records.jsonl"
        lines = [orjson.dumps(e.to_record()) + b"\n" for e in examples["test"][:50]]
        records.write_bytes(b"".join(lines))
        subprocess.run(["chmod", "-R", "a+rX", shared], check=True)
        result = subprocess.run(
            ["bash", SCRIPT],
            env={
                **os.environ,
                "REPOSITORY": str(repository),
                "RECORDS": str(records),
                "BIN": str(Path(sys.executable).parent),
            },
            capture_output=True,
            text=True,
            timeout=1400,
        )
    finally:
        shutil.rmtree(shared)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "image-check: 50 of 50 records scored by the image" in output
