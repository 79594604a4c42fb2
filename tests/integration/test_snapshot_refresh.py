"""The nightly snapshot refresh, end to end on a running server.

A server serves a copy of the tiny repository (snapshot as of 2017-12-02, the test day).
``ubm-build snapshot --as-of 2017-12-03 --repository`` adds a version serving the same model
with the next day's snapshot and pins it; ``ubm-build rollout`` switches the running server to
it (its canary check included). The test-window records whose inputs the new snapshot changes
then score differently, exactly as the in-process ONNX model reads them with the new snapshot,
and ``ubm-client info`` describes the new snapshot.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from ubm import UbmClient, contract, parse_record
from ubm_build import data, export
from ubm_build.data.point_in_time import SERVING_AS_OF
from ubm_build.inputs import snapshot
from ubm_build.inputs.model_inputs import ModelInputs, RecordReader
from ubm_build.serving import server, versions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BIN = Path(sys.executable).parent
AS_OF = "2017-12-03"
NEW_AS_OF = int(datetime(2017, 12, 3, tzinfo=data.CHINA).timestamp())
RECORDS = 300
ATOL = 1e-5


def ubm_build(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ubm-build"), *arguments], capture_output=True, text=True, timeout=300
    )


def served_scores(triton: server.TritonServer, records: list[dict]) -> np.ndarray:
    with UbmClient(triton.grpc_url, batch_size=64) as client:
        scores = client.score(records)
    assert [s.id for s in scores] == [r["id"] for r in records]
    return np.array([s.purchase_probability for s in scores])


def served_version(triton: server.TritonServer) -> str:
    with UbmClient(triton.grpc_url) as client:
        return ",".join(client.metadata()["versions"])


def info(triton: server.TritonServer) -> dict:
    done = subprocess.run(
        [str(BIN / "ubm-client"), "info", "--url", triton.grpc_url],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def same_inputs(a: ModelInputs, b: ModelInputs) -> np.ndarray:
    """bool [n]: the record's ids, mask and features are the same in both."""
    width = max(a.ids.shape[1], b.ids.shape[1])

    def padded(x: np.ndarray) -> np.ndarray:
        return np.pad(x, ((0, 0), (0, width - x.shape[1])))

    return (
        (padded(a.ids * a.mask) == padded(b.ids * b.mask)).all(1)
        & (padded(a.mask) == padded(b.mask)).all(1)
        & (a.features == b.features).all(1)
    )


@dataclass(frozen=True)
class Refresh:
    """What the refresh did, observed around each step."""

    old: versions.Build
    new: versions.Build
    snapshot_out: str
    rollout_out: str
    info_before: dict
    info_after: dict
    version_before_rollout: str
    version_after_rollout: str
    scores_before: np.ndarray
    scores_after: np.ndarray


@pytest.fixture(scope="module")
def served(tiny_repository, tmp_path_factory) -> Iterator[server.TritonServer]:
    """A server on its own copy of the tiny repository."""
    repository_dir = tmp_path_factory.mktemp("refresh") / "repository"
    shutil.copytree(tiny_repository, repository_dir, ignore=shutil.ignore_patterns("__pycache__"))
    workdir = tmp_path_factory.mktemp("refresh_triton")
    with server.TritonServer(repository_dir, workdir=workdir, ports=server.Ports.free()) as triton:
        yield triton


@pytest.fixture(scope="module")
def records(examples) -> list[dict]:
    return [ex.to_record() for ex in examples["test"][:RECORDS]]


@pytest.fixture(scope="module")
def refresh(served, records) -> Refresh:
    repository_dir = served.model_repository
    old = versions.Build.read(repository_dir, versions.pinned_version(repository_dir))
    info_before = info(served)
    scores_before = served_scores(served, records)
    refreshed = ubm_build("snapshot", "--as-of", AS_OF, "--repository", str(repository_dir))
    assert refreshed.returncode == 0, refreshed.stderr
    new = versions.Build.read(repository_dir, versions.pinned_version(repository_dir))
    before_rollout = served_version(served)
    rolled_out = ubm_build(
        "rollout",
        *("--repository", str(repository_dir)),
        *("--run-dir", str(served.workdir)),
        *("--url", served.grpc_url),
    )
    assert rolled_out.returncode == 0, rolled_out.stderr
    return Refresh(
        old=old,
        new=new,
        snapshot_out=refreshed.stdout + refreshed.stderr,
        rollout_out=rolled_out.stdout + rolled_out.stderr,
        info_before=info_before,
        info_after=info(served),
        version_before_rollout=before_rollout,
        version_after_rollout=served_version(served),
        scores_before=scores_before,
        scores_after=served_scores(served, records),
    )


@pytest.fixture(scope="module")
def new_snapshot(served, refresh) -> snapshot.Snapshot:
    directory = versions.version_dir(
        served.model_repository, contract.PREPROCESS, refresh.new.version
    )
    return snapshot.Snapshot.load(directory / snapshot.FILE)


def test_the_refresh_pins_a_new_version_with_the_new_snapshot(served, refresh, new_snapshot):
    old, new = refresh.old.metadata, refresh.new.metadata
    assert refresh.new.version == refresh.old.version + 1
    assert versions.pinned_version(served.model_repository) == refresh.new.version
    assert f"version {refresh.new.version}" in refresh.snapshot_out
    assert old["snapshot_as_of"] == str(SERVING_AS_OF)
    assert new["snapshot_as_of"] == str(NEW_AS_OF) == str(new_snapshot.as_of)
    assert new["refreshed_from"] == str(refresh.old.version)
    assert new["build_version"] == str(refresh.new.version)
    preprocess = versions.version_dir(served.model_repository, contract.PREPROCESS)
    served_file = (preprocess / snapshot.FILE).read_bytes()
    assert new["snapshot_sha256"] == hashlib.sha256(served_file).hexdigest()
    assert new["snapshot_sha256"] != old["snapshot_sha256"]
    assert int(new["snapshot_items"]) > int(old["snapshot_items"])
    assert int(new["snapshot_categories"]) >= int(old["snapshot_categories"])
    for key in set(old) - {"build_version", "refreshed_from"} - {k for k in old if "snapshot" in k}:
        assert new[key] == old[key], key  # the same model: the rest of its description stays


def test_the_new_version_serves_the_same_model(served, refresh):
    repository_dir = served.model_repository
    for model in (contract.ENCODER, contract.HEAD):
        files = [
            versions.version_dir(repository_dir, model, build.version) / "model.onnx"
            for build in (refresh.old, refresh.new)
        ]
        assert files[0].read_bytes() == files[1].read_bytes(), model
    assert len(refresh.new.canary_probabilities) == len(refresh.old.canary_probabilities) > 0


def test_rollout_switches_the_running_server(refresh):
    assert refresh.version_before_rollout == str(refresh.old.version)
    assert refresh.version_after_rollout == str(refresh.new.version)
    assert f"serving version {refresh.new.version}" in refresh.rollout_out


def test_scores_follow_the_new_snapshot(
    refresh, records, new_snapshot, tiny_onnx, tiny_reader: RecordReader
):
    events = [parse_record(r).events for r in records]
    old_reader, new_reader = tiny_reader, tiny_reader.at(new_snapshot)
    expected_before, _ = export.onnx_predict(*tiny_onnx, old_reader, events)
    expected_after, _ = export.onnx_predict(*tiny_onnx, new_reader, events)
    np.testing.assert_allclose(refresh.scores_before, expected_before, rtol=0, atol=ATOL)
    np.testing.assert_allclose(refresh.scores_after, expected_after, rtol=0, atol=ATOL)

    unchanged = same_inputs(old_reader(events), new_reader(events))
    changed = ~unchanged
    assert changed.sum() > RECORDS // 2  # the test day's own events are in the new snapshot
    moved = np.abs(refresh.scores_after - refresh.scores_before)
    assert (moved[changed] > 0).all()
    assert moved[changed].max() > 100 * ATOL
    np.testing.assert_allclose(moved[unchanged], 0, atol=ATOL)


def test_info_describes_the_new_snapshot(refresh):
    before, after = refresh.info_before, refresh.info_after
    assert before["version"] == str(refresh.old.version)
    assert after["version"] == str(refresh.new.version)
    for key in ("snapshot_as_of", "snapshot_items", "snapshot_categories", "snapshot_sha256"):
        assert before["build"][key] == refresh.old.metadata[key], key
        assert after["build"][key] == refresh.new.metadata[key], key
    assert after["build"]["snapshot_as_of"] == str(NEW_AS_OF)
    assert after["build"]["refreshed_from"] == str(refresh.old.version)
