"""`ubm-build snapshot` on a small CSV: the --as-of clock, the usage errors, the file, the
repository refresh."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from ubm import contract
from ubm_build.cli import _moment, main
from ubm_build.data import CHINA, read_events
from ubm_build.data.point_in_time import EventLog
from ubm_build.inputs.model_inputs import FEATURE_NAMES
from ubm_build.inputs.snapshot import FILE, Snapshot
from ubm_build.model.network import DEFAULT_BASE_MODEL
from ubm_build.serving import repository, versions

DEC_2 = int(datetime(2017, 12, 2, tzinfo=CHINA).timestamp())
"""2017-12-02 00:00 China time (2017-12-01 16:00 UTC)."""
ROWS = [
    # user, item, category, behaviour, ts
    ("1", "10", "7", "pv", DEC_2 - 7200),
    ("1", "10", "7", "buy", DEC_2 - 3600),
    ("2", "10", "7", "cart", DEC_2 - 60),
    ("2", "11", "8", "fav", DEC_2 - 30),
    ("3", "12", "8", "pv", DEC_2),  # at as-of: not counted
    ("3", "13", "9", "pv", DEC_2 + 3600),  # after: not counted
    ("4", "14", "9", "buy", int(datetime(2017, 11, 24, 23, tzinfo=CHINA).timestamp())),  # dropped
]


@pytest.fixture
def csv(tmp_path) -> Path:
    path = tmp_path / "UserBehavior.csv"
    path.write_text("".join(",".join(map(str, row)) + "\n" for row in ROWS))
    return path


def run(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (str(DEC_2), DEC_2),
        ("0", 0),
        ("2017-12-02", DEC_2),  # a date is China midnight
        ("2017-12-02T08:30", DEC_2 + 8 * 3600 + 1800),
        ("2017-12-01T16:00:00+00:00", DEC_2),  # an offset is honoured
        ("2017-12-02T00:00:00+08:00", DEC_2),
    ],
)
def test_as_of_is_unix_seconds_or_iso_in_china_time(value, expected):
    assert _moment(value) == expected


@pytest.mark.parametrize(
    "value", ["yesterday", "2017-13-01", "12.5", "", "99999999999999999999", "-5", "2200-01-01"]
)
def test_a_bad_as_of_is_a_usage_error_naming_the_option(csv, tmp_path, value):
    with pytest.raises(click.BadParameter):
        _moment(value)
    result = run("snapshot", "--as-of", value, "--csv", csv, "--out", tmp_path / "s.npz")
    assert result.exit_code == 2, result.output
    assert "--as-of" in result.output
    assert not (tmp_path / "s.npz").exists()


def test_a_missing_as_of_is_a_usage_error(csv, tmp_path):
    result = run("snapshot", "--csv", csv, "--out", tmp_path / "s.npz")
    assert result.exit_code == 2 and "--as-of" in result.output


@pytest.mark.parametrize("given", ["neither", "both"])
def test_exactly_one_destination_is_required(csv, tmp_path, given):
    repository_dir = tmp_path / "repository"
    repository_dir.mkdir()
    destinations = {
        "neither": [],
        "both": ["--out", tmp_path / "s.npz", "--repository", repository_dir],
    }[given]
    result = run("snapshot", "--as-of", "2017-12-02", "--csv", csv, *destinations)
    assert result.exit_code == 2, result.output
    assert "--out" in result.output and "--repository" in result.output
    assert not (tmp_path / "s.npz").exists()


def test_out_writes_the_snapshot_of_the_events_before_as_of(csv, tmp_path):
    out = tmp_path / "nested" / "snapshot.npz"
    result = run("snapshot", "--as-of", "2017-12-02", "--csv", csv, "--out", out)
    assert result.exit_code == 0, result.output
    assert "2 items, 2 categories" in result.output and str(out) in result.output
    written = Snapshot.load(out)
    assert written.as_of == DEC_2
    assert written.items.ids.tolist() == ["10", "11"]
    assert written.items.counts.tolist() == [[1, 1, 0, 1], [0, 0, 1, 0]]  # view cart fav buy
    assert written.items.users.tolist() == [2, 1]
    assert written.items.last_ts.tolist() == [DEC_2 - 60, DEC_2 - 30]
    assert written.categories.ids.tolist() == ["7", "8"]
    expected = EventLog.from_users(read_events(csv)).snapshot(DEC_2)
    for kind in ("items", "categories"):
        for field in ("ids", "counts", "users", "last_ts"):
            np.testing.assert_array_equal(
                getattr(getattr(written, kind), field), getattr(getattr(expected, kind), field)
            )


def test_a_repository_without_a_pinned_build_is_refused(csv, tmp_path):
    repository_dir = tmp_path / "repository"
    repository_dir.mkdir()
    result = run("snapshot", "--as-of", str(DEC_2), "--csv", csv, "--repository", repository_dir)
    assert result.exit_code == 1, result.output
    assert "no pinned build" in result.output


def test_repository_adds_a_pinned_version_serving_the_new_snapshot(csv, tmp_path, snapshot_file):
    placeholder = tmp_path / "placeholder.onnx"
    placeholder.write_bytes(b"not read")
    spec = repository.RepositorySpec(max_length=64, hidden_size=32, n_features=len(FEATURE_NAMES))
    out = repository.write_repository(
        tmp_path / "repository",
        spec,
        tokenizer_json=DEFAULT_BASE_MODEL / "tokenizer.json",
        snapshot_file=snapshot_file,
        encoder=placeholder,
        head_onnx=placeholder,
    )
    result = run("snapshot", "--as-of", "2017-12-02", "--csv", csv, "--repository", out)
    assert result.exit_code == 0, result.output
    assert "version 2" in result.output
    assert versions.pinned_version(out) == 2
    served = Snapshot.load(versions.version_dir(out, contract.PREPROCESS, 2) / FILE)
    assert served.as_of == DEC_2 and served.items.ids.tolist() == ["10", "11"]


def test_an_unwritable_out_is_a_one_line_error(csv, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("snapshot", "--as-of", "2017-12-02", "--csv", csv, "--out", blocker / "s.npz")
    assert result.exit_code == 1, result.output
    assert "cannot write the snapshot" in result.output
    assert "Traceback" not in result.output
