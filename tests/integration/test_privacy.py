"""Record contents never reach logs or error messages (issue 12, item 7).

One scenario runs against a tritonserver of this module's own, logging verbosely, so that its
log and work directory hold only what this scenario caused, and all that the server logs. Good
and bad records carry sentinel values (user, item and category ids, event types and times) that
are then searched for in: the server's log and every other file of its work directory, the
messages of the server's errors, of the SDK's exceptions (with their causes), the CLI's stderr
and the "error" of its error rows. Rows carry the record's "id" by design: outputs are not logs.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from ubm import InvalidRecordError, InvalidRequestError, UbmClient, contract
from ubm.records import Event, Record
from ubm_build.serving import server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

UBM_CLIENT = str(Path(sys.executable).parent / "ubm-client")

USER = "SENTINEL-USER-7f3a"
ITEM = "SENTINEL-ITEM-ab12"
ITEM_NUMBER = 918273645
CATEGORY = "SENTINEL-CAT-5e1d"
CATEGORY_NUMBER = 564738291
TYPE = "SENTINEL-TYPE-c0de"
TS_TEXT = "SENTINEL-TS-2b9c"
GOOD_TS = 1513131313
BAD_TS = 4918273645
SENTINELS = (USER, ITEM, str(ITEM_NUMBER), CATEGORY, str(CATEGORY_NUMBER), TYPE, TS_TEXT)
SENTINELS += (str(GOOD_TS), str(BAD_TS))


def good_record(n: int) -> dict:
    """A valid record made of sentinels: user, items, categories and times."""
    return {
        "id": f"{USER}-{n}",
        "events": [
            {"ts": GOOD_TS, "type": "view", "item": ITEM, "category": CATEGORY},
            {"ts": GOOD_TS + 60, "type": "cart", "item": ITEM_NUMBER, "category": CATEGORY_NUMBER},
        ],
    }


def with_event(**fields: object) -> dict:
    """A record whose only event is the good first event with ``fields`` replaced."""
    return {"id": USER, "events": [{**good_record(0)["events"][0], **fields}]}


# name: (the record, the part of the server's message that names the field)
BAD_RECORDS: dict[str, tuple[object, str]] = {
    "not an object": ([USER, ITEM_NUMBER], "a record must be a JSON object"),
    "id of a wrong type": ({**good_record(0), "id": [USER]}, "id must be"),
    "id too long": ({**good_record(0), "id": USER * 20}, "id is longer than"),
    "events not a list": ({"id": USER, "events": ITEM}, "events must be a list"),
    "event not an object": ({"id": USER, "events": [ITEM]}, "events[0] must be an object"),
    "ts of a wrong type": (with_event(ts=TS_TEXT), "events[0].ts"),
    "ts out of range": (with_event(ts=BAD_TS), "events[0].ts"),
    "unknown type": (with_event(type=TYPE), "events[0].type"),
    "item of a wrong type": (with_event(item={ITEM: ITEM_NUMBER}), "events[0].item"),
    "item too long": (with_event(item=ITEM * 20), "events[0].item"),
    "category of a wrong type": (with_event(category=[CATEGORY]), "events[0].category"),
    "category with a fraction": (with_event(category=CATEGORY_NUMBER + 0.5), "events[0].category"),
}
BAD_TEXTS: dict[str, tuple[bytes, str]] = {
    "not JSON": (f'{{"id": "{USER}", "events": {ITEM}}}'.encode(), "not valid JSON"),
    "not UTF-8": (f'{{"id": "{USER}'.encode() + b'\xff"}', "not UTF-8"),
    "a number too long": (
        f'{{"id": "{USER}", "events": [{{"ts": {ITEM_NUMBER}{"1" * 5000}}}]}}'.encode(),
        "not valid JSON",
    ),
    "nested too deeply": (
        f'{{"id": "{USER}", "events": '.encode() + b"[" * 100_000,
        "not valid JSON",
    ),
}
BAD_LINES = {
    **{name: (orjson.dumps(raw), where) for name, (raw, where) in BAD_RECORDS.items()},
    **BAD_TEXTS,
}
# Records the SDK sends as they are (`Record`s are not validated again): the server rejects them.
HAND_MADE = {
    "unknown type": Record(USER, (Event(GOOD_TS, TYPE, ITEM, CATEGORY),)),
    "ts out of range": Record(USER, (Event(BAD_TS, "view", ITEM, CATEGORY),)),
    "item too long": Record(USER, (Event(GOOD_TS, "view", ITEM * 20, CATEGORY),)),
    "category too long": Record(USER, (Event(GOOD_TS, "view", ITEM, CATEGORY * 20),)),
    "id too long": Record(USER * 20, (Event(GOOD_TS, "view", ITEM, CATEGORY),)),
}


@dataclass
class Transcript:
    """Everything the scenario produced that someone may read."""

    workdir: Path
    log_path: Path
    server_errors: dict[str, InferenceServerException] = field(default_factory=dict)
    sdk_errors: dict[str, BaseException] = field(default_factory=dict)
    scored_ids: list[str] = field(default_factory=list)
    cli_runs: list[subprocess.CompletedProcess] = field(default_factory=list)
    cli_rows: list[dict] = field(default_factory=list)
    cli_error_rows: list[dict] = field(default_factory=list)


def leaks(text: str | bytes) -> list[str]:
    """The sentinels that ``text`` holds."""
    data = text.encode(errors="replace") if isinstance(text, str) else text
    return [sentinel for sentinel in SENTINELS if sentinel.encode() in data]


def messages(error: BaseException) -> list[str]:
    """The message of ``error`` and of every error it was raised from or during."""
    found: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(found) < 10:
        found.append(str(seen))
        if isinstance(seen, InferenceServerException):
            found.append(seen.message() or "")
        seen = seen.__cause__ or seen.__context__
    return found


def infer_raw(url: str, rows: list[bytes]) -> None:
    """Send ``rows`` as the ensemble's records tensor, bypassing every client-side check."""
    records = grpcclient.InferInput(contract.RECORDS, [len(rows), 1], "BYTES")
    records.set_data_from_numpy(np.array(rows, dtype=np.object_).reshape(-1, 1))
    with grpcclient.InferenceServerClient(url) as client:
        client.infer(contract.ENSEMBLE, [records])


def raw_failures(url: str) -> dict[str, InferenceServerException]:
    """The server's error for each bad line, sent after a good one (so it is record 1)."""
    good = orjson.dumps(good_record(0))
    infer_raw(url, [good])  # good records are served
    failures = {}
    for name, (line, _) in BAD_LINES.items():
        with pytest.raises(InferenceServerException) as info:
            infer_raw(url, [good, line])
        failures[name] = info.value
    # A request Triton itself refuses: two records in one row.
    wrong_shape = grpcclient.InferInput(contract.RECORDS, [1, 2], "BYTES")
    wrong_shape.set_data_from_numpy(np.array([[good, good]], dtype=np.object_))
    with (
        grpcclient.InferenceServerClient(url) as client,
        pytest.raises(InferenceServerException) as info,
    ):
        client.infer(contract.ENSEMBLE, [wrong_shape])
    failures["wrong shape"] = info.value
    return failures


def sdk_failures(url: str, transcript: Transcript) -> None:
    """Score good records, then each bad one (client side) and each hand-made one (server side)."""
    with UbmClient(url, retry_deadline_s=0) as client:
        transcript.scored_ids = [s.id for s in client.score([good_record(1), good_record(2)])]
        for name, (raw, _) in BAD_RECORDS.items():
            with pytest.raises(InvalidRecordError, match="record 1: ") as info:
                client.score([good_record(1), raw])
            transcript.sdk_errors[f"client: {name}"] = info.value
        for name, record in HAND_MADE.items():
            with pytest.raises(InvalidRequestError, match="record 0: ") as info:
                client.score_batch([record])
            transcript.sdk_errors[f"server: {name}"] = info.value
        beyond_json = Record(USER, (Event(int(str(ITEM_NUMBER) * 4), "view", ITEM),))
        with pytest.raises(InvalidRecordError, match="cannot be sent as JSON") as info:
            client.score_batch([beyond_json])
        transcript.sdk_errors["client: an integer JSON cannot carry"] = info.value


def cli_runs(url: str, directory: Path, transcript: Transcript) -> None:
    """Score a file of good and bad lines, then resume into an output of another input."""
    source = directory / "records.jsonl"
    lines = [orjson.dumps(good_record(3)), *(line for line, _ in BAD_LINES.values())]
    source.write_bytes(b"\n".join([*lines, orjson.dumps(good_record(4))]) + b"\n")
    output, errors = directory / "scores.jsonl", directory / "errors.jsonl"
    command = [UBM_CLIENT, "score", str(source), "--url", url, "--batch-size", "4"]
    scored = subprocess.run(
        [*command, "-o", str(output), "--errors", str(errors)], capture_output=True, timeout=120
    )
    transcript.cli_runs.append(scored)
    transcript.cli_rows = [orjson.loads(row) for row in output.read_bytes().splitlines()]
    transcript.cli_error_rows = [orjson.loads(row) for row in errors.read_bytes().splitlines()]

    other = directory / "other.jsonl"
    other.write_bytes(orjson.dumps({"id": f"{USER}-other", "purchase_probability": 0.5}) + b"\n")
    resumed = subprocess.run(
        [*command, "-o", str(other), "--resume"], capture_output=True, timeout=120
    )
    transcript.cli_runs.append(resumed)


@pytest.fixture(scope="module")
def transcript(tiny_repository, tmp_path_factory) -> Transcript:
    """Run the whole scenario against a server of our own, then stop it: its log is complete."""
    repository = shutil.copytree(tiny_repository, tmp_path_factory.mktemp("privacy") / "repo")
    workdir = tmp_path_factory.mktemp("privacy-run")
    triton = server.TritonServer(
        repository, workdir=workdir, ports=server.Ports.free(), verbose=True
    )
    result = Transcript(workdir=triton.workdir, log_path=triton.log_path)
    with triton:
        result.server_errors = raw_failures(triton.grpc_url)
        sdk_failures(triton.grpc_url, result)
        cli_runs(triton.grpc_url, tmp_path_factory.mktemp("privacy-cli"), result)
    return result


def test_the_search_finds_every_sentinel_in_what_was_sent():
    sent = b"\n".join([orjson.dumps(good_record(0)), *(line for line, _ in BAD_LINES.values())])
    assert leaks(sent) == list(SENTINELS)


def test_the_server_rejects_every_bad_record_naming_its_index_and_field(transcript):
    for name, (_, where) in BAD_LINES.items():
        error = transcript.server_errors[name]
        assert error.status() == "StatusCode.INVALID_ARGUMENT", (name, error)
        assert "record 1: " in error.message() and where in error.message(), (name, error)


def test_no_server_error_holds_a_sentinel(transcript):
    found = {name: leaks(" ".join(messages(e))) for name, e in transcript.server_errors.items()}
    assert {name: sentinels for name, sentinels in found.items() if sentinels} == {}


def test_no_sdk_exception_holds_a_sentinel(transcript):
    assert transcript.scored_ids == [f"{USER}-1", f"{USER}-2"]
    assert len(transcript.sdk_errors) == len(BAD_RECORDS) + len(HAND_MADE) + 1
    found = {name: leaks(" ".join(messages(e))) for name, e in transcript.sdk_errors.items()}
    assert {name: sentinels for name, sentinels in found.items() if sentinels} == {}


def test_the_cli_scores_the_good_lines_and_names_each_bad_one(transcript):
    scored, resumed = transcript.cli_runs
    assert scored.returncode == 1, scored.stderr.decode()
    assert len(transcript.cli_rows) == len(BAD_LINES) + 2
    assert [row["id"] for row in transcript.cli_rows if "error" not in row] == [
        f"{USER}-3",
        f"{USER}-4",
    ]
    assert [row["line"] for row in transcript.cli_error_rows] == list(range(2, len(BAD_LINES) + 2))
    assert resumed.returncode == 2
    assert "--resume: the id of line 1 differs" in resumed.stderr.decode()


def test_no_cli_stderr_or_error_message_holds_a_sentinel(transcript):
    for run in transcript.cli_runs:
        assert leaks(run.stderr) == [], run.stderr.decode(errors="replace")
    for row in [*transcript.cli_rows, *transcript.cli_error_rows]:
        assert leaks(row.get("error", "")) == [], row


def test_no_file_of_the_server_run_holds_a_sentinel(transcript):
    assert transcript.log_path.stat().st_size > 0
    files = [path for path in transcript.workdir.rglob("*") if path.is_file()]
    assert transcript.log_path in files
    found = {str(path): leaks(path.read_bytes()) for path in files}
    assert {path: sentinels for path, sentinels in found.items() if sentinels} == {}


def test_every_file_of_the_server_run_is_owner_only(transcript):
    paths = [transcript.workdir, *transcript.workdir.rglob("*")]
    modes = {str(path): stat.S_IMODE(path.lstat().st_mode) for path in paths}
    assert {path: oct(mode) for path, mode in modes.items() if mode & 0o077} == {}
