"""`ubm_build.serving.server` without tritonserver: command line, admin token, shared memory."""

from __future__ import annotations

import mmap
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ubm_build import cli
from ubm_build.serving import server

PORTS = server.Ports(grpc=18001, http=18000, metrics=18002)
OPEN_APIS = ("health", "metadata", "inference", "model-config", "statistics")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make_region(path: Path, file_mode: int = 0o644) -> Path:
    path.write_bytes(b"user 123 viewed item 456")
    path.chmod(file_mode)
    return path


@pytest.fixture
def unstarted(tmp_path) -> server.TritonServer:
    return server.TritonServer(
        tmp_path / "repository", workdir=tmp_path / "run", ports=PORTS, shm_dir=tmp_path / "shm"
    )


def test_the_command_restricts_the_apis_our_sdk_does_not_use(unstarted):
    command = unstarted.command("s3cret")
    restricted = "shared-memory,logging,trace,model-repository:ubm-admin-token=s3cret"
    assert f"--grpc-restricted-protocol={restricted}" in command
    assert f"--http-restricted-api={restricted}" in command
    assert not set(OPEN_APIS) & set(server.RESTRICTED_APIS)


def test_the_command_names_the_regions_with_our_prefix(unstarted):
    prefix = f"ubm_{os.getuid()}_18001_"
    assert unstarted.shm_prefix == prefix
    assert f"--backend-config=python,shm-region-prefix-name={prefix}" in unstarted.command("t")


def test_the_prefix_of_one_port_is_no_prefix_of_another():
    assert not server.shm_prefix(80011).startswith(server.shm_prefix(8001))
    assert not server.shm_prefix(8001).startswith(server.shm_prefix(800))


def test_the_admin_token_is_new_each_time_and_owner_only(tmp_path):
    (tmp_path / server.ADMIN_TOKEN_FILE).write_text("old")
    (tmp_path / server.ADMIN_TOKEN_FILE).chmod(0o644)
    first = server.write_admin_token(tmp_path)
    assert mode(tmp_path / server.ADMIN_TOKEN_FILE) == 0o600
    assert server.read_admin_token(tmp_path) == first
    second = server.write_admin_token(tmp_path)
    assert second != first and len(second) >= 40
    assert server.read_admin_token(tmp_path) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == [server.ADMIN_TOKEN_FILE]


def other_files(shm: Path, prefix: str) -> list[Path]:
    """Regions our cleanup must leave alone, next to those with `prefix`."""
    shm.mkdir(exist_ok=True)
    (shm / f"{prefix}dir").mkdir()
    return [
        make_region(shm / "triton_python_backend_shm_region_1234"),
        make_region(shm / f"ubm_{os.getuid()}_80011_abcd"),  # port 80011, not 8001
        make_region(shm / f"ubm_{os.getuid() + 1}_8001_abcd"),  # another user's prefix
        make_region(shm / prefix.removesuffix("_")),
        shm / f"{prefix}dir",
    ]


def test_stale_region_cleanup_removes_only_our_prefix(tmp_path):
    shm, prefix = tmp_path / "shm", server.shm_prefix(8001)
    others = other_files(shm, prefix)
    ours = [make_region(shm / f"{prefix}{i}") for i in range(3)]
    assert server.remove_stale_regions(prefix, shm) == ours
    assert sorted(shm.iterdir()) == sorted(others)


def test_stale_region_cleanup_spares_a_region_a_process_maps(tmp_path):
    shm, prefix = tmp_path / "shm", server.shm_prefix(8001)
    shm.mkdir()
    mapped, stale = make_region(shm / f"{prefix}live"), make_region(shm / f"{prefix}stale")
    with mapped.open("r+b") as f, mmap.mmap(f.fileno(), 0):
        assert str(mapped) in server.mapped_paths(shm)
        assert server.remove_stale_regions(prefix, shm) == [stale]
        assert mapped.exists()
    assert server.remove_stale_regions(prefix, shm) == [mapped]


def test_tightening_makes_only_our_regions_owner_only(tmp_path):
    shm, prefix = tmp_path / "shm", server.shm_prefix(8001)
    others = other_files(shm, prefix)
    modes = {path: mode(path) for path in others}
    ours = [make_region(shm / f"{prefix}a"), make_region(shm / f"{prefix}b", 0o600)]
    assert server.tighten_regions(prefix, shm) == ours[:1]
    assert [mode(path) for path in ours] == [0o600, 0o600]
    assert {path: mode(path) for path in others} == modes


def test_start_and_stop_clean_guard_and_write_the_token(unstarted, tmp_path, monkeypatch):
    """start/stop around a stand-in process (a sleeping Python) instead of tritonserver."""
    real_popen = subprocess.Popen
    seen: dict = {}

    def fake_popen(command, **kwargs):
        seen.update(command=command, kwargs=kwargs)
        return real_popen([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs)

    monkeypatch.setattr(server.subprocess, "Popen", fake_popen)
    shm, prefix = tmp_path / "shm", unstarted.shm_prefix
    others = other_files(shm, prefix)
    stale = make_region(shm / f"{prefix}killed-earlier")

    unstarted.start()
    try:
        assert not stale.exists()
        token = server.read_admin_token(unstarted.workdir)
        assert mode(unstarted.admin_token_path) == 0o600
        assert f"--http-restricted-api={','.join(server.RESTRICTED_APIS)}:" in " ".join(
            seen["command"]
        )
        assert any(arg.endswith(f"={token}") for arg in seen["command"])
        assert seen["kwargs"]["umask"] == 0o077
        status = Path(f"/proc/{unstarted.pid}/status").read_text()
        assert "Umask:\t0077" in status
        new = make_region(shm / f"{prefix}created-at-load")  # as the python backend does
        deadline = time.monotonic() + 5
        while mode(new) != 0o600 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mode(new) == 0o600
    finally:
        unstarted.stop()
    assert not new.exists()
    assert sorted(shm.iterdir()) == sorted(others)


def test_cli_stop_removes_the_stale_regions_of_its_run_dir(tmp_path, monkeypatch):
    shm, prefix = tmp_path / "shm", server.shm_prefix(8001)
    others = other_files(shm, prefix)
    make_region(shm / f"{prefix}stale")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / server.SHM_PREFIX_FILE).write_text(prefix + "\n")
    remove = server.remove_stale_regions_of
    monkeypatch.setattr(server, "remove_stale_regions_of", lambda workdir: remove(workdir, shm))
    result = CliRunner().invoke(cli.main, ["stop", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "removed 1 stale shared-memory region" in result.output
    assert sorted(shm.iterdir()) == sorted(others)
