"""`ubm-client` and `UbmClient` against the real tritonserver."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from ubm.cli import main

pytestmark = pytest.mark.integration


def run_score(triton, stdin: bytes, *args: str):
    result = CliRunner().invoke(
        main, ["score", "-", "--url", triton.grpc_url, "-q", *args], input=stdin
    )
    rows = [orjson.loads(line) for line in result.stdout_bytes.splitlines()]
    return result.exit_code, rows


def test_all_lines_scored_exit_0(triton, examples):
    lines = b"".join(orjson.dumps(ex.to_record()) + b"\n" for ex in examples["test"][:20])
    code, rows = run_score(triton, lines, "--batch-size", "8")
    assert code == 0
    assert [r["id"] for r in rows] == [ex.id for ex in examples["test"][:20]]
    assert all(0.0 < r["purchase_probability"] < 1.0 for r in rows)


def test_bad_lines_become_error_records_exit_1(triton, examples):
    good = [orjson.dumps(ex.to_record()) for ex in examples["test"][:3]]
    lines = [good[0], b"{oops", good[1], b'{"id": "x", "events": []}', b"\xff", good[2]]
    code, rows = run_score(triton, b"\n".join(lines) + b"\n")
    assert code == 1
    assert len(rows) == len(lines)
    assert [r.get("line") for r in rows] == [None, 2, None, 4, 5, None]
    assert rows[3] == {"id": "x", "line": 4, "error": "events must not be empty"}
    assert "purchase_probability" in rows[5]


def test_health(triton):
    result = CliRunner().invoke(main, ["health", "--url", triton.grpc_url])
    assert result.exit_code == 0, result.output
