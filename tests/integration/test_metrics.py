"""The ``ubm_*`` metrics on a real tritonserver's metrics port, and the monitoring files.

The server serves a copy of the tiny repository with a drift reference written into
``preprocess/1`` from a handful of hand-made training records, plus `BARE`: the same
preprocess model without reference and with two instances, called directly. Known records go
through the SDK (and, for the bad ones the SDK refuses to send, through tritonclient), and
every count, gauge and histogram bucket is checked exactly.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import yaml
from google.protobuf import text_format
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from ubm import UbmClient, contract
from ubm.records import ERROR_FIELDS, Event
from ubm.scores import Score
from ubm_build.inputs import drift
from ubm_build.inputs.model_inputs import RecordReader
from ubm_build.serving import repository, server, triton_metrics
from ubm_build.serving.triton_models import engine_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
ALERTS = MONITORING / "prometheus" / "ubm-alerts.yml"
ALERT_TESTS = MONITORING / "prometheus" / "ubm-alerts.test.yml"
DASHBOARD = MONITORING / "grafana" / "ubm-dashboard.json"
BARE = "preprocess_bare"
"""A second preprocess model: no drift reference, two instances sharing its counters."""
T0 = 1_512_172_800
LONG = 40
"""Events of the long records: their text exceeds the tiny model's 64 tokens."""


SNAPSHOT_ITEM, SNAPSHOT_CATEGORY = "3006793", "4756105"
"""The real CSV's most viewed item before the test day, and its category: the served snapshot
knows them (the made-up ids ``i*`` and ``c*`` it never saw)."""


def record_events(*spec: tuple[str, str, str]) -> list[Event]:
    """Events one minute apart from (type, item, category) triples."""
    return [
        Event(ts=T0 + 60 * n, type=kind, item=item, category=category)
        for n, (kind, item, category) in enumerate(spec)
    ]


def long_events(item: str, category: str) -> list[Event]:
    return [Event(ts=T0 + 30 * n, type="view", item=item, category=category) for n in range(LONG)]


TRAINING = [
    record_events(("view", "i1", "c1"), ("view", "i2", "c1"), ("cart", "i2", "c1")),
    record_events(("view", "i3", "c2"), ("buy", "i3", "c2")),
    record_events(("fav", "i1", "c1")),
    long_events("i4", "c2"),
]
"""4 records, 46 events: 43 view, 1 cart, 1 fav, 1 buy; 1 truncated text (the long one)."""
HOLDOUT = [record_events(("view", "i1", "c1"), ("view", "i5", "c1"), ("view", "i6", "c3"))]
"""The later window: 2 of 3 events on unseen items, 1 of 3 in an unseen category."""
SERVED = [
    record_events(("view", "i1", "c1"), ("cart", "i9", "c1")),
    record_events(("view", "i2", "c7"), ("fav", "i2", "c7")),
    record_events(("buy", "i3", "c2")),
    long_events("i4", "c2"),
    record_events(("cart", SNAPSHOT_ITEM, SNAPSHOT_CATEGORY)),
]
"""5 good records, 46 events: 42 view, 2 cart, 1 fav, 1 buy; unseen by the training records:
items i9 and the snapshot's (2 events), categories c7 and the snapshot's (3 events); 1
truncated text (the long one). The snapshot saw the last item and category of the last record
only."""
BATCH_SIZE = 2
"""Records per SDK request: the good records go in 3 requests."""


def as_record(n: int, events: list[Event]) -> dict:
    return {
        "id": f"u{n}",
        "events": [
            {"ts": e.ts, "type": e.type, "item": e.item, "category": e.category} for e in events
        ],
    }


GOOD = [as_record(n, events) for n, events in enumerate(SERVED)]
BAD_TS = {**GOOD[0], "events": [{**GOOD[0]["events"][0], "ts": T0 * 1000}]}
"""A record with a timestamp in milliseconds: fails its request with reason ``ts``."""


def records_input(*rows: bytes) -> list[grpcclient.InferInput]:
    array = np.array(rows, dtype=object).reshape(-1, 1)
    infer_input = grpcclient.InferInput(contract.RECORDS, list(array.shape), "BYTES")
    infer_input.set_data_from_numpy(array)
    return [infer_input]


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def served_version(repo: Path) -> str:
    """The preprocess version a server started on `repo` loads: the pinned one, or the
    newest."""
    pinned = read_config(repo / contract.PREPROCESS / "config.pbtxt").version_policy.specific
    if pinned.versions:
        return str(pinned.versions[0])
    return str(max(int(p.name) for p in (repo / contract.PREPROCESS).iterdir() if p.name.isdigit()))


def add_bare_preprocess(repo: Path) -> None:
    """Copy `preprocess` (before its reference is written) as `BARE`, with two instances."""
    shutil.copytree(repo / contract.PREPROCESS, repo / BARE)
    path = repo / BARE / "config.pbtxt"
    config = read_config(path)
    config.name = BARE
    config.instance_group[0].count = 2
    path.write_text(text_format.MessageToString(config))


@pytest.fixture(scope="module")
def max_length(tiny_repository) -> int:
    return repository.served_parameter(
        tiny_repository, contract.PREPROCESS, contract.PARAM_MAX_LENGTH
    )


@pytest.fixture(scope="module")
def reference(tiny_repository, max_length) -> drift.DriftReference:
    preprocess = tiny_repository / contract.PREPROCESS / served_version(tiny_repository)
    words = repository.served_parameter(
        tiny_repository, contract.PREPROCESS, contract.PARAM_SNAPSHOT_WORDS
    )
    reader = RecordReader.from_directory(
        preprocess, max_length=max_length, snapshot_words=bool(words)
    )
    truncated = reader(TRAINING).truncated
    return drift.reference_of(TRAINING, truncated, max_length, holdout=HOLDOUT)


@pytest.fixture(scope="module")
def metrics_triton(tiny_repository, reference, tmp_path_factory):
    """A server on a copy of the tiny repository, with a drift reference, and `BARE` loaded
    (the server loads the ensemble's models only)."""
    repo = tmp_path_factory.mktemp("metrics") / "repository"
    shutil.copytree(tiny_repository, repo)
    add_bare_preprocess(repo)
    drift.write_reference(repo / contract.PREPROCESS / served_version(repo), reference)
    workdir = tmp_path_factory.mktemp("metrics_triton")
    with server.TritonServer(repo, workdir=workdir, ports=server.Ports.free()) as triton:
        admin = {server.GRPC_ADMIN_HEADER: server.read_admin_token(workdir)}
        with closing(grpcclient.InferenceServerClient(triton.grpc_url)) as client:
            client.load_model(BARE, headers=admin)
        yield triton


Samples = dict[tuple[str, frozenset], float]
"""(sample name, its labels) -> value."""


def samples_of(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_text(triton: server.TritonServer) -> str:
    with urllib.request.urlopen(f"{triton.metrics_url}/metrics", timeout=5) as response:
        return response.read().decode()


def names(samples: Samples, model: str) -> set[str]:
    return {name for name, labels in samples if ("model", model) in labels}


@dataclass(frozen=True)
class Traffic:
    before: Samples
    """The scrape before any request (after the encoder's and head's warm-up)."""
    after: Samples
    scores: list[Score]
    log: str
    version: str
    exported: set[str]
    """The metric names of the scrape after, as the server spelled them (the parser adds
    ``_total`` to counters that lack it)."""

    def value(
        self, name: str, model: str = contract.PREPROCESS, *, before: bool = False, **labels: str
    ) -> float:
        """One sample of the scrape after (or before) the requests; KeyError if not there."""
        samples = self.before if before else self.after
        return samples[
            (name, frozenset({"model": model, "version": self.version, **labels}.items()))
        ]


@pytest.fixture(scope="module")
def traffic(metrics_triton) -> Traffic:
    """The known requests, sent once; then the scrape once Triton counted them all."""
    triton = metrics_triton
    before_text = scrape_text(triton)
    before = triton_metrics.parse(before_text)
    with UbmClient(triton.grpc_url, batch_size=BATCH_SIZE) as client:
        scores = client.score(GOOD)
    with closing(grpcclient.InferenceServerClient(triton.grpc_url)) as client:
        for rows in ([orjson.dumps(GOOD[1]), orjson.dumps(BAD_TS), orjson.dumps(GOOD[2])], [b"{"]):
            with pytest.raises(InferenceServerException, match="record"):
                client.infer(contract.ENSEMBLE, records_input(*rows))
        for start in range(0, len(GOOD), BATCH_SIZE):
            rows = [orjson.dumps(r) for r in GOOD[start : start + BATCH_SIZE]]
            client.infer(BARE, records_input(*rows))
    requests = -(-len(GOOD) // BATCH_SIZE)
    triton_metrics.scrape_after(
        triton.metrics_url, before, [contract.PREPROCESS, contract.HEAD, BARE], requests
    )
    after_text = scrape_text(triton)
    return Traffic(
        before=samples_of(before_text),
        after=samples_of(after_text),
        scores=scores,
        log=triton.log_path.read_text(),
        version=served_version(triton.model_repository),
        exported=set(re.findall(r"^([a-zA-Z_:][\w:]*)", after_text, re.MULTILINE)),
    )


def test_scored_invalid_and_unscored_records_are_counted(traffic):
    """A bad record fails its whole request: it is counted once, by the field it broke; the
    request's other records count as unscored, not as scored nor invalid."""
    after = traffic.after
    assert traffic.value("ubm_records_scored_total") == len(GOOD)
    invalid = {
        dict(labels)["reason"]: v
        for (name, labels), v in after.items()
        if name == "ubm_records_invalid_total" and ("model", contract.PREPROCESS) in labels
    }
    assert invalid.pop("ts") == 1
    assert invalid.pop("json") == 1
    assert set(invalid.values()) == {0}
    assert "unprocessable" in invalid and "non_finite_features" in invalid
    assert traffic.value("ubm_records_unscored_total") == 2


def test_drift_counters_count_the_scored_records(traffic):
    events = {kind: traffic.value("ubm_events_total", type=kind) for kind in drift.EVENT_TYPES}
    assert events == {"view": 42, "cart": 2, "fav": 1, "buy": 1}
    assert traffic.value("ubm_events_unseen_item_total") == 2
    assert traffic.value("ubm_events_unseen_category_total") == 3
    assert traffic.value("ubm_texts_truncated_total") == 1


def test_records_whose_last_ids_the_snapshot_never_saw_are_counted(traffic):
    """Every good record but the last ends on a made-up item and category; the warm-up
    record is not counted."""
    for model in (contract.PREPROCESS, BARE):
        for kind in ("item", "category"):
            value = traffic.value("ubm_snapshot_unseen_total", model, kind=kind)
            assert value == len(GOOD) - 1, (model, kind)
            assert traffic.value("ubm_snapshot_unseen_total", model, before=True, kind=kind) == 0


def test_drift_gauges_compare_served_with_the_reference(traffic, reference):
    served = {
        "events_per_record": 46 / 5,
        "unseen_item_share": 2 / 46,
        "unseen_category_share": 3 / 46,
        "truncated_share": 1 / 5,
    }
    expected = {"served": served, "reference": reference.values.to_dict()}
    assert reference.values.events_per_record == 46 / 4
    assert reference.values.unseen_item_share == 2 / 3
    assert reference.values.unseen_category_share == 1 / 3
    assert reference.values.truncated_share == 1 / 4
    for source, values in expected.items():
        for quantity in served:
            gauge = traffic.value(f"ubm_drift_{quantity}", source=source)
            assert gauge == pytest.approx(values[quantity], rel=1e-12), (source, quantity)
    served_mix = {"view": 42 / 46, "cart": 2 / 46, "fav": 1 / 46, "buy": 1 / 46}
    reference_mix = {"view": 43 / 46, "cart": 1 / 46, "fav": 1 / 46, "buy": 1 / 46}
    for source, mix in (("served", served_mix), ("reference", reference_mix)):
        for kind, share in mix.items():
            gauge = traffic.value("ubm_drift_event_type_share", source=source, type=kind)
            assert gauge == pytest.approx(share, rel=1e-12), (source, kind)


def test_each_returned_probability_is_in_the_histogram(traffic):
    """Bucket counts, sum and count grew by exactly the probabilities the client got."""
    probabilities = [score.purchase_probability for score in traffic.scores]
    bounds = [*engine_model.PROBABILITY_BUCKETS, float("inf")]

    def grown(name: str, **labels: str) -> float:
        after = traffic.value(name, contract.HEAD, **labels)
        return after - traffic.value(name, contract.HEAD, before=True, **labels)

    for bound in bounds:
        le = "+Inf" if bound == float("inf") else str(bound)
        expected = sum(p <= bound for p in probabilities)
        assert grown("ubm_purchase_probability_bucket", le=le) == expected, le
    assert grown("ubm_purchase_probability_count") == len(probabilities)
    assert grown("ubm_purchase_probability_sum") == pytest.approx(sum(probabilities), rel=1e-6)


def test_without_reference_counters_stay_and_reference_gauges_go(traffic):
    """`BARE` has no reference: its counters and served gauges are there, its unseen and
    reference metrics are not (the snapshot's unseen counter needs no reference), and each of
    its two instances logged one warning. Its served gauges cover both instances' records."""
    after = traffic.after
    exported = names(after, BARE)
    assert "ubm_records_scored_total" in exported and "ubm_events_total" in exported
    assert {n for n in exported if "unseen" in n} == {"ubm_snapshot_unseen_total"}
    assert not [
        labels
        for name, labels in after
        if ("source", "reference") in labels and ("model", BARE) in labels
    ]
    assert traffic.value("ubm_records_scored_total", BARE) == len(GOOD)
    assert traffic.value("ubm_drift_events_per_record", BARE, source="served") == 46 / 5
    assert traffic.value("ubm_drift_truncated_share", BARE, source="served") == 1 / 5
    warnings = [line for line in traffic.log.splitlines() if "no drift reference" in line]
    assert len(warnings) == 2 and all(f"{BARE}/{traffic.version}" in line for line in warnings)


def test_labels_never_carry_record_contents(traffic):
    allowed = {
        "model": {contract.PREPROCESS, contract.HEAD, BARE},
        "version": {traffic.version},
        "source": {"served", "reference"},
        "type": set(drift.EVENT_TYPES),
        "kind": {"item", "category"},
        "reason": {*ERROR_FIELDS, "unprocessable", "non_finite_features", "other"},
        "le": {str(b) for b in engine_model.PROBABILITY_BUCKETS} | {"+Inf"},
    }
    for name, labels in traffic.after:
        if name.startswith("ubm_"):
            for key, label in labels:
                assert label in allowed[key], (name, key, label)


# --- the monitoring files ---------------------------------------------------------------------

METRIC_NAME = re.compile(r"(?<![\w:])((?:ubm|nv)_\w+)")
RECORDED_NAME = re.compile(r"(?<![\w:])(ubm:[\w:]+)")


def rule_groups() -> list[dict]:
    return yaml.safe_load(ALERTS.read_text())["groups"]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_alert_rules_have_the_prometheus_rule_file_shape():
    groups = rule_groups()
    assert groups and len({g["name"] for g in groups}) == len(groups)
    for group in groups:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            if "record" in rule:
                assert set(rule) <= {"record", "expr", "labels"}
                assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["record"])
            else:
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
                assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", rule["alert"])
                assert rule["labels"]["severity"] in {"warning", "critical"}
                assert {"summary", "description"} <= set(rule["annotations"])


def test_dashboard_is_a_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["targets"] and panel["gridPos"]["w"] <= 24
        assert all(t["expr"] and t["refId"] for t in panel["targets"])


def test_monitoring_uses_only_exported_metrics(traffic):
    """Every ubm_* and nv_* name in the rules and the dashboard is one the server exports
    (histograms by their _bucket, _sum and _count series), and every ubm:* name they use is
    a recording rule of the rule file."""
    rules = [rule for group in rule_groups() for rule in group["rules"]]
    expressions = [rule["expr"] for rule in rules] + dashboard_expressions()
    used = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
    assert {"ubm_records_scored_total", "nv_inference_queue_duration_us"} <= used
    assert used - traffic.exported == set()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    used_recorded = {name for expr in expressions for name in RECORDED_NAME.findall(expr)}
    assert used_recorded <= recorded


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_and_their_unit_tests():
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        result = subprocess.run(["promtool", *command], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
