"""Keyed pseudonyms end to end: a tiny build on pseudonymised data holds no raw id, and its
server gives raw ids (pseudonymised by ``preprocess`` with the key) the scores of ids the
client pseudonymised itself; without the key, or with another one, it refuses to load."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ubm import UbmClient, pseudonyms
from ubm_build import data, export, paths, steps
from ubm_build.data import pseudonymise
from ubm_build.model import train
from ubm_build.serving import repository, server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PROFILE = train.Profile("tiny", max_train_examples=800, max_length=32, text_components=8)
KEY = b"0123456789abcdef0123456789abcdef-test-key"
SCORED = 64
"""Test-day records scored each way."""


@dataclass(frozen=True)
class RawIds:
    """The training data's ids: items and categories of 5 digits or more (shorter numbers
    are everyday numbers, e.g. in the tokenizer's vocabulary), users as record ids show them
    (``u<user>-``)."""

    ids: frozenset[str]
    users: frozenset[str]

    @classmethod
    def of(cls, csv_path: Path) -> RawIds:
        ids, users = set(), set()
        with open(csv_path, newline="") as f:
            for user, item, category, _, _ in csv.reader(f):
                users.add(user)
                ids.update(i for i in (item, category) if len(i) >= 5)
        return cls(frozenset(ids), frozenset(users))

    def found_in(self, path: Path) -> set[str]:
        """The raw ids in `path`'s bytes, as ASCII or as numpy's UTF-32 strings."""
        content = path.read_bytes()
        runs = {m.group().decode() for m in re.finditer(rb"\d+", content)}
        runs |= {
            m.group().decode("utf-32-le") for m in re.finditer(rb"(?:\d\x00\x00\x00)+", content)
        }
        users = {m.group(1).decode() for m in re.finditer(rb"u(\d+)-", content)}
        return (runs & self.ids) | (users & self.users)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "pseudonym-key"
    path.write_bytes(KEY)
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class PseudonymousBuild:
    csv: Path
    directories: tuple[Path, ...]
    """Model, ONNX graphs, model repository, reports."""

    @property
    def repository(self) -> Path:
        return self.directories[2]


@pytest.fixture(scope="module")
def build(tiny_base_model, key_file, tmp_path_factory) -> PseudonymousBuild:
    root = tmp_path_factory.mktemp("pseudonymous")
    csv_path = root / "data" / "UserBehavior.csv"
    pseudonymise.pseudonymise_csv(paths.DEFAULT_CSV, csv_path, pseudonyms.read_key(key_file))
    model_dir, onnx_dir = root / "artifacts" / "model", root / "artifacts" / "onnx"
    repository_dir, reports_dir = root / "model_repository", root / "reports"
    log: list[str] = []
    steps.train_step(PROFILE, csv_path, tiny_base_model, model_dir, log.append)
    steps.export_step(
        model_dir, onnx_dir, csv_path, log.append, engines=(export.Engine.ONNXRUNTIME,)
    )
    served = steps.repository_step(
        model_dir, onnx_dir, repository_dir, repository.Target.PYTHON, log.append
    )
    steps.report_step(model_dir, onnx_dir, reports_dir, served, log.append)
    return PseudonymousBuild(csv_path, (model_dir, onnx_dir, repository_dir, reports_dir))


@pytest.fixture(scope="module")
def raw_ids() -> RawIds:
    return RawIds.of(paths.DEFAULT_CSV)


def test_the_scan_finds_raw_ids_where_they_are(raw_ids, tiny_model):
    """The check below would see raw ids: a model built on raw data shows them (its
    snapshot's UTF-32 strings), and so does the raw CSV."""
    _, model_dir = tiny_model
    assert raw_ids.found_in(model_dir / "snapshot.npz")
    assert raw_ids.found_in(paths.DEFAULT_CSV)


def test_no_raw_id_is_in_any_file_of_the_build(build, raw_ids, tiny_base_model):
    """Every file but the public base model's tokenizer, whose token numbers are not ids."""
    public = (tiny_base_model / "tokenizer.json").read_bytes()
    files = [f for d in build.directories for f in d.rglob("*") if f.is_file()]
    files = [f for f in files if f.name != "tokenizer.json" or f.read_bytes() != public]
    assert len(files) > 30
    leaks = {str(f): found for f in files if (found := raw_ids.found_in(f))}
    assert leaks == {}
    assert not raw_ids.found_in(build.csv)
    assert pseudonymise.key_fingerprint(build.csv) == pseudonyms.fingerprint(KEY)


def test_the_repository_needs_the_key_by_its_fingerprint_and_never_holds_it(build):
    config = (build.repository / "preprocess" / "config.pbtxt").read_text()
    assert pseudonyms.fingerprint(KEY) in config
    for f in build.repository.rglob("*"):
        assert not f.is_file() or KEY not in f.read_bytes(), f


@pytest.fixture(scope="module")
def keyed_server(build, key_file, tmp_path_factory) -> Iterator[server.TritonServer]:
    triton = server.TritonServer(
        build.repository,
        workdir=tmp_path_factory.mktemp("triton-keyed"),
        ports=server.Ports.free(),
        env={pseudonyms.KEY_FILE_ENV: str(key_file)},
    )
    with triton:
        yield triton


def test_raw_ids_with_the_key_score_as_ids_pseudonymised_by_the_client(keyed_server):
    raw_test = data.examples_by_window(paths.DEFAULT_CSV)["test"][:SCORED]
    raw = [ex.to_record() for ex in raw_test]
    hashed = [pseudonyms.pseudonymise_record(record, KEY) for record in raw]
    assert hashed[0]["events"][0]["item"] != raw[0]["events"][0]["item"]
    with UbmClient(keyed_server.grpc_url) as client:
        from_raw = client.score(raw, segment=True)
        from_hashed = client.score(hashed, segment=True)
    np.testing.assert_array_equal(
        [s.purchase_probability for s in from_raw], [s.purchase_probability for s in from_hashed]
    )
    assert [s.segment for s in from_raw] == [s.segment for s in from_hashed]


@pytest.mark.parametrize("key", [None, b"another key, 32 bytes or more, not the one"])
def test_a_server_without_the_right_key_refuses_to_load_and_says_why(build, tmp_path, key):
    env = {}
    if key is not None:
        other = tmp_path / "other-key"
        other.write_bytes(key)
        other.chmod(0o600)
        env[pseudonyms.KEY_FILE_ENV] = str(other)
    triton = server.TritonServer(
        build.repository, workdir=tmp_path / "triton", ports=server.Ports.free(), env=env
    )
    triton.start()
    try:
        with pytest.raises(server.ServerError) as info:
            triton.wait_ready()
    finally:
        triton.stop()
    expected = "built on pseudonymised ids" if key is None else "is not the one"
    assert expected in str(info.value)
