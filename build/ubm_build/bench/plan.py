"""Capacity planning on paper: a measured per-replica capacity (``make capacity``) turned into
the replicas, cores and GPUs a target load needs, with one replica's worth of headroom.

The arithmetic, in `plan`: a replica sustains ``capacity × utilisation`` records/s (the rest is
margin for the machine's drift), so ``ceil(qps / that)`` replicas carry the load and one more
keeps carrying it while a replica is lost (a crash, a node drained, a rollout). Cores, GPUs and
cost follow from what each measured replica had (the capacity file's machine, unless told
otherwise) and a price per core-hour and per GPU-hour, all stated in the output as assumptions.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_UTILISATION = 0.8
"""The share of a replica's measured capacity a plan loads it with."""
DEFAULT_CORE_HOUR_USD = 0.04
"""An on-demand x86 vCPU-hour, roughly, at the large clouds in 2026: an assumption to replace."""
DEFAULT_GPU_HOUR_USD = 2.5
"""An on-demand data-centre GPU-hour (H100 class), roughly, in 2026: an assumption to replace."""


class PlanError(ValueError):
    """The capacity file cannot support the plan asked for; the message says why."""


@dataclass(frozen=True)
class Capacity:
    """What one replica sustained within its SLO, as ``make capacity`` measured it."""

    records_per_s: float
    slo_ms: float
    slo_percentile: int
    cores: int
    gpus: int
    records_per_request: int
    measured: str
    """When and on which server, for the plan's record."""

    @classmethod
    def read(cls, path: Path) -> Capacity:
        """From a ``results/capacity.json``.

        Raises:
            PlanError: the file lacks a capacity within the SLO.
        """
        try:
            result = json.loads(path.read_text())
            capacity = result["capacity"]
            measured = cls(
                records_per_s=float(capacity["records_per_s"]),
                slo_ms=float(result["slo"]["ms"]),
                slo_percentile=int(result["slo"]["percentile"]),
                cores=int(result["machine"]["cpu_count"]),
                gpus=int(result["machine"].get("gpu_count", 0)),
                records_per_request=int(result["batch_size"]),
                measured=f"{result['created']}, {result.get('served_variant')} encoder",
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PlanError(f"{path} holds no capacity measurement ({e})") from e
        if not (_positive(measured.records_per_s) and measured.cores >= 1 and measured.gpus >= 0):
            raise PlanError(f"{path}: a capacity needs records/s > 0 and at least one core")
        return measured


@dataclass(frozen=True)
class Plan:
    qps: float
    """Target load, records per second."""
    slo_ms: float
    capacity: Capacity
    utilisation: float
    core_hour_usd: float
    gpu_hour_usd: float
    replicas_for_load: int
    replicas: int
    """`replicas_for_load` plus one, so that losing a replica keeps the load within the SLO."""
    cores: int
    gpus: int
    usd_per_month: float
    notes: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)


HOURS_PER_MONTH = 730


def plan(
    qps: float,
    slo_ms: float,
    capacity: Capacity,
    *,
    utilisation: float = DEFAULT_UTILISATION,
    core_hour_usd: float = DEFAULT_CORE_HOUR_USD,
    gpu_hour_usd: float = DEFAULT_GPU_HOUR_USD,
) -> Plan:
    """Replicas, cores, GPUs and monthly cost for `qps` records/s at p99 within `slo_ms`.

    A replica has the capacity's `Capacity.cores` and `Capacity.gpus` (use
    `dataclasses.replace` for replicas of another size measured elsewhere).

    Raises:
        PlanError: `slo_ms` is tighter than the SLO the capacity was measured at (measure
            again with that SLO), or the arguments are out of range.
    """
    if not (_positive(qps) and _positive(slo_ms)) or not 0 < utilisation <= 1:
        raise PlanError("need a finite qps > 0, slo_ms > 0 and 0 < utilisation <= 1")
    if not all(math.isfinite(p) and p >= 0 for p in (core_hour_usd, gpu_hour_usd)):
        raise PlanError("need finite prices >= 0")
    if slo_ms < capacity.slo_ms:
        raise PlanError(
            f"the capacity was measured at p{capacity.slo_percentile} <= {capacity.slo_ms:g} ms;"
            f" for {slo_ms:g} ms measure it again: make capacity SLO_MS={slo_ms:g}"
        )
    size = f"{capacity.cores} cores" + (f" and {capacity.gpus} GPU(s)" if capacity.gpus else "")
    notes = [
        f"capacity: {capacity.records_per_s:.1f} records/s per replica of {size}"
        f" at p{capacity.slo_percentile} <= {capacity.slo_ms:g} ms,"
        f" {capacity.records_per_request} record(s) per request ({capacity.measured})",
        f"each replica loaded to {utilisation:.0%} of it; one replica more than the load needs",
        f"cost: {core_hour_usd:g} USD per core-hour"
        + (f", {gpu_hour_usd:g} USD per GPU-hour" if capacity.gpus else "")
        + f", {HOURS_PER_MONTH} hours a month (an assumption: use your prices)",
    ]
    if slo_ms > capacity.slo_ms:
        notes.append(
            f"the SLO asked ({slo_ms:g} ms) is looser than the measured one: the plan is"
            " conservative"
        )
    per_replica = capacity.records_per_s * utilisation
    for_load = math.ceil(qps / per_replica)
    replicas = for_load + 1
    cores = replicas * capacity.cores
    gpus = replicas * capacity.gpus
    hourly = cores * core_hour_usd + gpus * gpu_hour_usd
    return Plan(
        qps=qps,
        slo_ms=slo_ms,
        capacity=capacity,
        utilisation=utilisation,
        core_hour_usd=core_hour_usd,
        gpu_hour_usd=gpu_hour_usd,
        replicas_for_load=for_load,
        replicas=replicas,
        cores=cores,
        gpus=gpus,
        usd_per_month=round(hourly * HOURS_PER_MONTH, 2),
        notes=tuple(notes),
    )


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0
