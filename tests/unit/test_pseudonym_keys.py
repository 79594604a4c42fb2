"""Keyed pseudonyms: the SDK's functions, the CSV rewrite and the server's key settings."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ubm import pseudonyms
from ubm_build import cli as build_cli
from ubm_build.data import pseudonymise, read_events
from ubm_build.serving import settings

KEY = b"k" * 32


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    path.chmod(0o600)
    return path


def test_a_pseudonym_is_keyed_kind_specific_stable_and_kept_when_given_again():
    name = pseudonyms.pseudonym(KEY, "item", "2268318")
    assert pseudonyms.is_pseudonym(name) and name != "2268318"
    assert pseudonyms.pseudonym(KEY, "item", "2268318") == name
    assert pseudonyms.pseudonym(KEY, "category", "2268318") != name
    assert pseudonyms.pseudonym(b"x" * 32, "item", "2268318") != name
    assert pseudonyms.pseudonym(KEY, "item", name) == name  # already one: kept
    assert pseudonyms.pseudonym(KEY, "category", "") == ""


def test_pseudonymise_record_keeps_the_id_and_everything_but_the_ids():
    record = {
        "id": "u1",
        "events": [
            {"ts": 1, "type": "view", "item": "7", "category": "9"},
            {"ts": 2, "type": "cart", "item": 8},
        ],
        "label": 1,
    }
    out = pseudonyms.pseudonymise_record(record, KEY)
    assert out["id"] == "u1" and out["label"] == 1
    assert out["events"][0] == {
        "ts": 1,
        "type": "view",
        "item": pseudonyms.pseudonym(KEY, "item", "7"),
        "category": pseudonyms.pseudonym(KEY, "category", "9"),
    }
    assert "category" not in out["events"][1]
    assert pseudonyms.pseudonymise_record(out, KEY) == out


def test_read_key_refuses_open_short_and_missing_files(key_file, tmp_path):
    assert pseudonyms.read_key(key_file) == KEY
    key_file.chmod(0o640)  # a Kubernetes Secret mounted for the pod's fsGroup
    assert pseudonyms.read_key(key_file) == KEY
    key_file.chmod(0o644)
    with pytest.raises(pseudonyms.PseudonymKeyError, match="chmod 600"):
        pseudonyms.read_key(key_file)
    short = tmp_path / "short"
    short.write_bytes(b"short")
    short.chmod(0o600)
    with pytest.raises(pseudonyms.PseudonymKeyError, match="32 bytes or more"):
        pseudonyms.read_key(short)
    with pytest.raises(pseudonyms.PseudonymKeyError, match="No such file"):
        pseudonyms.read_key(tmp_path / "missing")


def test_fingerprints_tell_keys_apart_without_showing_them():
    assert pseudonyms.fingerprint(KEY) == pseudonyms.fingerprint(KEY)
    assert pseudonyms.fingerprint(KEY) != pseudonyms.fingerprint(b"x" * 32)
    assert KEY.decode() not in pseudonyms.fingerprint(KEY)


def test_pseudonymised_csv_has_the_same_events_under_other_ids(tmp_path):
    source = tmp_path / "raw.csv"
    rows = [
        ("1", "2268318", "2520377", "pv", "1511544070"),
        ("1", "2333346", "2520771", "cart", "1511561733"),
        ("100", "2268318", "2520377", "buy", "1511572885"),
    ]
    with open(source, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "out" / "pseudo.csv"
    assert pseudonymise.pseudonymise_csv(source, out, KEY) == 3
    assert pseudonymise.key_fingerprint(out) == pseudonyms.fingerprint(KEY)
    assert pseudonymise.key_fingerprint(source) is None
    with open(out, newline="") as f:
        written = list(csv.reader(f))
    for before, after in zip(rows, written, strict=True):
        assert after[3:] == list(before[3:])
        assert all(pseudonyms.is_pseudonym(i) for i in after[:3])
        assert not set(after[:3]) & {i for row in rows for i in row[:3]}
    raw_events, events = read_events(source), read_events(out)
    assert sorted(len(e) for e in raw_events.values()) == sorted(len(e) for e in events.values())
    user = pseudonyms.pseudonym(KEY, "user", "1")
    assert [e.item for e in events[user]] == [
        pseudonyms.pseudonym(KEY, "item", "2268318"),
        pseudonyms.pseudonym(KEY, "item", "2333346"),
    ]


def test_serve_settings_check_the_key_file_and_never_show_the_key(key_file, tmp_path):
    values = {"repository": tmp_path, "run_dir": tmp_path, "pseudonym_key_file": key_file}
    built = settings.build_settings(values, environ={})
    assert built.pseudonym_key_file == key_file.resolve()
    assert KEY.decode() not in str(built.describe())
    from_env = settings.build_settings(
        {"repository": tmp_path, "run_dir": tmp_path},
        environ={pseudonyms.KEY_FILE_ENV: str(key_file)},
    )
    assert from_env.pseudonym_key_file == key_file.resolve()
    os.chmod(key_file, 0o604)
    with pytest.raises(settings.SettingsError, match="owner-only"):
        settings.build_settings(values, environ={})


def test_ubm_build_pseudonymise_writes_the_csv_and_refuses_an_open_key(key_file, tmp_path):
    source = tmp_path / "raw.csv"
    source.write_text("1,2268318,2520377,pv,1511544070\n")
    out = tmp_path / "pseudo.csv"
    args = ["pseudonymise", "--csv", str(source), "--key-file", str(key_file), "--out", str(out)]
    result = CliRunner().invoke(build_cli.main, args)
    assert result.exit_code == 0, result.output
    assert f"key {pseudonyms.fingerprint(KEY)}" in result.output
    assert pseudonymise.key_fingerprint(out) == pseudonyms.fingerprint(KEY)
    key_file.chmod(0o604)
    refused = CliRunner().invoke(build_cli.main, args)
    assert refused.exit_code == 1 and "others may read it" in refused.output
    same = CliRunner().invoke(build_cli.main, [*args[:-1], str(source)])
    assert same.exit_code == 2 and "must not be the input CSV" in same.output
