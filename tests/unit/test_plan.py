"""`ubm-build plan`: replicas, cores and cost from a hand-made capacity measurement."""

import json

import pytest
from click.testing import CliRunner

from ubm_build import cli
from ubm_build.bench import plan


def capacity_file(tmp_path, records_per_s=100.0, slo_ms=100.0, cores=2):
    path = tmp_path / "capacity.json"
    path.write_text(
        json.dumps(
            {
                "created": "2026-11-26T10:48:59+00:00",
                "served_variant": "openvino-int8",
                "slo": {"percentile": 99, "ms": slo_ms},
                "batch_size": 1,
                "machine": {"cpu_count": cores},
                "capacity": {"records_per_s": records_per_s},
            }
        )
    )
    return path


def test_the_load_gets_enough_replicas_at_the_utilisation_and_one_more(tmp_path):
    capacity = plan.Capacity.read(capacity_file(tmp_path))
    result = plan.plan(1000, 100, capacity, utilisation=0.8, core_hour_usd=0.05)
    assert result.replicas_for_load == 13  # 1000 / (100 * 0.8) = 12.5
    assert result.replicas == 14 and result.cores == 28
    assert result.usd_per_month == pytest.approx(28 * 0.05 * plan.HOURS_PER_MONTH)
    exact = plan.plan(800, 100, capacity, utilisation=0.8)
    assert exact.replicas_for_load == 10 and exact.replicas == 11


def test_a_tighter_slo_than_measured_needs_a_new_measurement(tmp_path):
    capacity = plan.Capacity.read(capacity_file(tmp_path, slo_ms=100))
    with pytest.raises(plan.PlanError, match="make capacity SLO_MS=50"):
        plan.plan(1000, 50, capacity)
    looser = plan.plan(1000, 250, capacity)
    assert any("conservative" in note for note in looser.notes)


def test_a_file_without_a_capacity_is_refused(tmp_path):
    path = tmp_path / "capacity.json"
    path.write_text(json.dumps({"slo": {"ms": 100}}))
    with pytest.raises(plan.PlanError, match="no capacity measurement"):
        plan.Capacity.read(path)
    with pytest.raises(plan.PlanError, match="records/s > 0"):
        plan.Capacity.read(capacity_file(tmp_path, records_per_s=0))


@pytest.mark.parametrize("qps", [float("inf"), float("nan"), 0])
def test_a_load_that_is_no_number_of_records_is_refused(tmp_path, qps):
    capacity = plan.Capacity.read(capacity_file(tmp_path))
    with pytest.raises(plan.PlanError, match="finite qps"):
        plan.plan(qps, 100, capacity)


def test_the_command_prints_the_plan_and_its_assumptions(tmp_path):
    path = capacity_file(tmp_path, records_per_s=159.4)
    args = ["plan", "--qps", "10000", "--slo-ms", "100", "--capacity", str(path)]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("10000 records/s at p99 <= 100 ms: 80 replicas (79 for")
    assert "USD per core-hour" in result.output
    as_json = json.loads(CliRunner().invoke(cli.main, [*args, "--json"]).output)
    assert as_json["replicas"] == 80 and as_json["cores"] == 160
    tighter = ["plan", "--qps", "10000", "--slo-ms", "20", "--capacity", str(path)]
    refused = CliRunner().invoke(cli.main, tighter)
    assert refused.exit_code == 1 and "SLO_MS=20" in refused.output


def test_gpu_replicas_count_their_gpus_and_gpu_hours(tmp_path):
    path = capacity_file(tmp_path, records_per_s=2000.0, cores=8)
    args = ["plan", "--qps", "10000", "--slo-ms", "100", "--capacity", str(path)]
    gpu = [*args, "--gpus-per-replica", "1", "--gpu-hour-usd", "2", "--core-hour-usd", "0.05"]
    result = json.loads(CliRunner().invoke(cli.main, [*gpu, "--json"]).output)
    assert result["replicas"] == 8  # 10000 / (2000 * 0.8) = 6.25 -> 7, + 1
    assert (result["cores"], result["gpus"]) == (64, 8)
    assert result["usd_per_month"] == pytest.approx((64 * 0.05 + 8 * 2) * plan.HOURS_PER_MONTH)
    printed = CliRunner().invoke(cli.main, gpu).output
    assert "64 cores, 8 GPUs," in printed and "2 USD per GPU-hour" in printed
    cpu_only = CliRunner().invoke(cli.main, [*args, "--cores-per-replica", "4"]).output
    assert "GPU" not in cpu_only and ", 32 cores," in cpu_only
