"""The real tritonserver as `TritonServer` starts it: owner-only shared memory with our own
prefix, stale regions removed after a crash, and Triton's admin APIs behind a token.

Each test starts its own server on free ports, so that the session's server is left alone.
"""

from __future__ import annotations

import os
import stat
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from ubm_build.serving import server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def hardened(tiny_repository, tmp_path_factory) -> Iterator[server.TritonServer]:
    workdir = tmp_path_factory.mktemp("hardened")
    with server.TritonServer(tiny_repository, workdir=workdir, ports=server.Ports.free()) as t:
        yield t


def score_one(url: str, examples, headers: dict[str, str] | None = None) -> float:
    """Score one real record through the ensemble with a bare tritonclient."""
    records = grpcclient.InferInput("records", [1, 1], "BYTES")
    record = orjson.dumps(examples["test"][0].to_record())
    records.set_data_from_numpy(np.array([[record]], dtype=np.object_))
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer("ubm", [records], headers=headers)
    return float(result.as_numpy("purchase_probability").reshape(-1)[0])


def region_modes(prefix: str) -> dict[Path, int]:
    """Every file in /dev/shm with `prefix`, whoever owns it, and its permission bits."""
    return {
        path: stat.S_IMODE(path.stat().st_mode)
        for path in server.SHM_DIR.iterdir()
        if path.name.startswith(prefix)
    }


def http_get(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_regions_are_ours_and_owner_only_while_serving(hardened, examples):
    assert 0 < score_one(hardened.grpc_url, examples) < 1
    modes = region_modes(hardened.shm_prefix)
    assert len(modes) >= 3  # one per python-backend model instance
    assert {path: mode for path, mode in modes.items() if mode & 0o077} == {}
    assert set(modes.values()) == {0o600}
    assert all(path.stat().st_uid == os.getuid() for path in modes)


def test_a_restart_removes_the_regions_a_killed_server_left(tiny_repository, tmp_path, examples):
    ports = server.Ports.free()
    crashed = server.TritonServer(tiny_repository, workdir=tmp_path / "first", ports=ports)
    crashed.start()
    try:
        crashed.wait_ready()
        score_one(crashed.grpc_url, examples)
        process = psutil.Process(crashed.pid)
        victims = [process, *process.children(recursive=True)]
        for victim in victims:  # the server and its python stubs, as a crash of the host would
            victim.kill()
        psutil.wait_procs(victims, timeout=10)
        stale = region_modes(crashed.shm_prefix)
        assert len(stale) >= 3, "a SIGKILLed server leaves its regions behind"

        restarted = server.TritonServer(tiny_repository, workdir=tmp_path / "second", ports=ports)
        assert restarted.shm_prefix == crashed.shm_prefix
        with restarted:
            assert not any(path.exists() for path in stale)
            live = region_modes(restarted.shm_prefix)
            assert len(live) >= 3 and set(live.values()) == {0o600}
            crashed.stop()  # reaps the killed process; must spare the live server's regions
            assert all(path.exists() for path in live)
            assert 0 < score_one(restarted.grpc_url, examples) < 1
        assert region_modes(restarted.shm_prefix) == {}
    finally:
        crashed.stop()


@pytest.fixture
def client_region() -> Iterator[tuple[str, int]]:
    """A small POSIX shared-memory region of the test's own, as a client would register."""
    name = f"ubmtest_{uuid.uuid4().hex}"
    path = server.SHM_DIR / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, 64)
        yield f"/{name}", 64
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def test_shared_memory_registration_needs_the_admin_token(hardened, client_region):
    key, size = client_region
    token = server.read_admin_token(hardened.workdir)
    with grpcclient.InferenceServerClient(hardened.grpc_url) as client:
        for headers in (None, {server.GRPC_ADMIN_HEADER: "wrong"}, {server.ADMIN_HEADER: token}):
            with pytest.raises(InferenceServerException, match="restricted"):
                client.register_system_shared_memory("probe", key, size, headers=headers)
        admin = {server.GRPC_ADMIN_HEADER: token}
        client.register_system_shared_memory("probe", key, size, headers=admin)
        status = client.get_system_shared_memory_status(headers=admin, as_json=True)
        assert list(status["regions"]) == ["probe"]
        client.unregister_system_shared_memory("probe", headers=admin)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_log_settings()
        assert client.get_log_settings(headers=admin)


def test_the_http_logging_api_needs_the_admin_token(hardened):
    url = f"http://{hardened.host}:{hardened.ports.http}/v2/logging"
    token = server.read_admin_token(hardened.workdir)
    assert http_get(url, {}) == 403
    assert http_get(url, {server.ADMIN_HEADER: "wrong"}) == 403
    assert http_get(url, {server.ADMIN_HEADER: token}) == 200


def test_health_metadata_statistics_and_inference_need_no_token(hardened, examples):
    base = f"http://{hardened.host}:{hardened.ports.http}/v2"
    for path in ("/health/ready", "/models/ubm", "/models/ubm/config", "/models/ubm/stats"):
        assert http_get(base + path, {}) == 200, path
    with grpcclient.InferenceServerClient(hardened.grpc_url) as client:
        assert client.is_server_ready() and client.is_model_ready("ubm")
        assert client.get_model_metadata("ubm") and client.get_model_config("ubm")
        assert client.get_inference_statistics("ubm")
    assert 0 < score_one(hardened.grpc_url, examples) < 1
