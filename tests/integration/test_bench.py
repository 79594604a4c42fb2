"""`python -m ubm_build.bench` on the tiny model and repository: every row, and the JSON's shape.

No timing is asserted: the tiny model says nothing about speed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import pytest
from click.testing import CliRunner

from ubm_build import export
from ubm_build.bench import benchmark as bench
from ubm_build.bench import tune
from ubm_build.serving.repository import Tuning, served_variant

pytestmark = pytest.mark.integration

ROW_FIELDS = {
    "name",
    "description",
    "records_per_call",
    "latency_of",
    "records",
    "seconds",
    "records_per_s",
    "p50_ms",
    "p99_ms",
    "server",
    "round_records_per_s",
}


@pytest.fixture(scope="module")
def onnx_dir(tiny_model, tiny_onnx, tiny_reader, examples, tmp_path_factory):
    """The layout `ubm-build export` writes: encoder-<variant>.onnx and head.onnx."""
    model, _ = tiny_model
    encoder, head = tiny_onnx
    directory = tmp_path_factory.mktemp("bench_onnx")
    shutil.copy2(encoder, directory / "encoder-fp32.onnx")
    shutil.copy2(head, directory / "head.onnx")
    events = [ex.events for ex in examples["train"][:32]]
    calibration = export.TokenCalibration(tiny_reader, events)
    for variant in (export.Variant.INT8_STATIC, export.Variant.OPENVINO_INT8):
        export.derive_variant(variant, encoder, model, directory / variant.file_name, calibration)
    return directory


def test_bench_runs_every_row_and_writes_its_json(
    triton, tiny_model, tiny_repository, onnx_dir, tmp_path
):
    _, model_dir = tiny_model
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        bench.main,
        [
            *("--records", "6", "--seeds-records", "2", "--single-records", "2"),
            *("--batch-size", "3", "--rows-per-run", "2", "--rounds", "2"),
            *("--model-dir", str(model_dir), "--onnx-dir", str(onnx_dir)),
            *("--repository", str(tiny_repository), "--url", triton.grpc_url),
            *("--metrics-url", triton.metrics_url),
            *("--out", str(out)),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())

    names = [row["name"] for row in report["rows"]]
    assert names == [
        "seeds_way",
        # measured in rounds:
        "pytorch",
        "ort_fp32",
        "ort_fp32_single",  # the served variant's
        "ort_int8_static",
        "openvino_int8",
        "served_c1",
        "served_c4",
        "served_c16",
        "served_c1_single",
    ]
    for row in report["rows"]:
        assert set(row) == ROW_FIELDS
        assert row["records_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["seeds_way"]["records"] == 2 and rows["seeds_way"]["records_per_call"] == 1
    assert all(rows[name]["records"] == 2 for name in names if name.endswith("_single"))
    assert all(rows[name]["records"] == 6 for name in names[1:] if "single" not in name)
    assert rows["served_c16"]["records_per_call"] == 3
    assert "2 records per run" in rows["ort_int8_static"]["description"]

    assert "openvino in this process" in rows["openvino_int8"]["description"]
    for name in names:
        rounds = rows[name]["round_records_per_s"]
        assert rounds is None if name == "seeds_way" else len(rounds) == 2
        split = rows[name]["server"]
        if not name.startswith("served"):
            assert split is None
            continue
        assert set(split) == {"ubm", "preprocess", "encoder", "head"}
        requests = rows[name]["records"] // rows[name]["records_per_call"]
        assert all(model["requests"] == requests for model in split.values()), split
        assert split["encoder"]["records"] == rows[name]["records"]

    assert report["served_variant"] == "fp32"  # the tiny repository serves the fp32 export
    assert report["served_max_length"] == report["max_length"] == 64
    assert report["served_rows_per_run"] == 8 and report["in_process_rows_per_run"] == 2
    assert report["machine"]["cpu_count"] >= 1
    ratios = report["ratios"]
    in_process = [row for row in report["rows"][1:] if not row["name"].startswith("served")]
    best = max(
        (r for r in in_process if "single" not in r["name"]), key=lambda r: r["records_per_s"]
    )
    assert report["best_in_process"] == best["name"]
    assert ratios["served_c16_over_best_in_process"] == pytest.approx(
        rows["served_c16"]["records_per_s"] / best["records_per_s"]
    )
    assert ratios["served_c16_over_inprocess_ort"] == pytest.approx(
        rows["served_c16"]["records_per_s"] / rows["ort_fp32"]["records_per_s"]
    )
    assert ratios["served_c16_over_seeds_way"] == pytest.approx(
        rows["served_c16"]["records_per_s"] / rows["seeds_way"]["records_per_s"]
    )
    assert "served_c16_over_seeds_way" in result.output
    latency = report["latency_target"]
    assert latency["target_ms"] == pytest.approx(2 * rows["ort_fp32_single"]["p50_ms"] + 5)
    assert latency["served_c1_single_p99_ms"] == rows["served_c1_single"]["p99_ms"]
    assert latency["met"] == (latency["served_c1_single_p99_ms"] < latency["target_ms"])


def test_served_variant_is_recognised_by_content(tiny_repository, onnx_dir, tmp_path):
    assert served_variant(tiny_repository, onnx_dir) == "fp32"
    assert served_variant(tiny_repository, tmp_path) is None
    assert served_variant(tmp_path, onnx_dir) is None


def test_tune_measures_each_variant_on_its_own_server(
    tiny_model, tiny_repository, onnx_dir, tmp_path
):
    _, model_dir = tiny_model
    out = tmp_path / "tuning.json"
    result = CliRunner().invoke(
        tune.main,
        [
            *("--records", "6", "--single-records", "2", "--rounds", "1"),
            *("--only", "untuned", "--only", "defaults"),
            *("--model-dir", str(model_dir), "--onnx-dir", str(onnx_dir)),
            *("--repository", str(tiny_repository), "--run-dir", str(tmp_path / "run")),
            *("--out", str(out)),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["served_variant"] == "fp32"
    assert [v["name"] for v in report["variants"]] == ["untuned", "defaults"]
    untuned, defaults = report["variants"]
    assert untuned["tuning"]["encoder_rows_per_run"] == 0
    assert defaults["tuning"] == asdict(Tuning())
    for variant in report["variants"]:
        assert set(variant["rows"]) == {"served_c1", "served_c16", "served_c1_single"}
        encoder = variant["rows"]["served_c16"]["server"]["encoder"]
        assert encoder["records"] == 6
        assert len(variant["rows"]["served_c1"]["round_records_per_s"]) == 1
    config = tmp_path / "run" / "repositories" / "untuned" / "encoder" / "config.pbtxt"
    assert 'string_value: "0"' in config.read_text().split("rows_per_run")[1]
